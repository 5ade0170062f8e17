"""Save images, videos and grids from float tensors in [0, 1]."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from .guard import target

log = logging.getLogger(__name__)


def to_uint8(tensor: Any) -> Any:
    """(..., 3, H, W) float in [0, 1] -> numpy uint8 (..., H, W, 3)."""
    import torch

    t = tensor.detach().to("cpu", torch.float32).clamp(0, 1)
    t = (t * 255).round().to(torch.uint8)
    return t.movedim(-3, -1).numpy()


def save_image(tensor: Any, path: str | Path) -> Path:
    """Save a (3, H, W) [0, 1] tensor as PNG."""
    from PIL import Image

    if tensor.dim() != 3:
        raise ValueError(f"save_image expects (3, H, W), got shape {tuple(tensor.shape)}")
    path = target(path)
    Image.fromarray(to_uint8(tensor)).save(path)
    return path


def _pad16(frames: Any) -> Any:
    """Nearest-neighbour upscale (by an integer factor) then edge-pad so H and W are multiples of 16."""
    import torch
    import torch.nn.functional as F

    h, w = frames.shape[-2:]
    scale = max(1, math.ceil(64 / max(1, min(h, w))))  # tiny clips: make them viewable too
    if scale > 1:
        frames = F.interpolate(frames, scale_factor=scale, mode="nearest")
    h, w = frames.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        frames = F.pad(frames, (0, pw, 0, ph), mode="replicate")
    return frames.to(torch.float32)


def save_video(tensor: Any, path: str | Path, fps: int = 8) -> Path:
    """Save (F, 3, H, W) [0, 1] as MP4 (libx264); falls back to a GIF next to it if ffmpeg fails."""
    import imageio.v2 as imageio

    if tensor.dim() != 4:
        raise ValueError(f"save_video expects (F, 3, H, W), got shape {tuple(tensor.shape)}")
    path = target(path)
    frames = to_uint8(_pad16(tensor.detach().float().cpu()))
    try:
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=16) as writer:
            for frame in frames:
                writer.append_data(frame)
        return path
    except Exception as exc:  # noqa: BLE001 - any ffmpeg failure falls back to GIF
        gif = path.with_suffix(".gif")
        log.warning("could not write MP4 %s (%s); saved a GIF instead: %s", path, exc, gif)
        path.unlink(missing_ok=True)
        imageio.mimsave(target(gif), list(to_uint8(tensor.detach().float().cpu())), duration=1000 / fps, loop=0)
        return gif


def make_grid(images: Sequence[Any], nrow: int, pad: int = 2) -> Any:
    """Tile (3, H, W) images (same size) into one (3, H', W') tensor, nrow per row, white padding (torchvision)."""
    import torch
    from torchvision.utils import make_grid as tv_grid

    if not images:
        raise ValueError("make_grid needs at least one image")
    batch = torch.stack([img.detach().float().cpu() for img in images])
    return tv_grid(batch, nrow=max(1, min(int(nrow), len(images))), padding=pad, pad_value=1.0)


def save_grid(images: Sequence[Any], path: str | Path, nrow: int = 4) -> Path:
    """Save a grid of (3, H, W) images as one PNG."""
    return save_image(make_grid(images, nrow), path)


CELL = 96  # smallest side of a grid cell in pixels: tiny 16x16 samples are shown 6x, nearest-neighbour


def _caption_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, draw, font, width: int) -> str:
    """The caption cut with '...' to fit `width` pixels."""
    text = text[:max(1, int(width))]  # a glyph is at least a pixel wide: never measure more than fits
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, draw, font, width: int, lines: int = 2) -> str:
    """The caption in up to `lines` lines of at most `width` pixels (the last one cut with '...')."""
    out, words = [], text[:max(1, int(width)) * lines].split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line += " " + words.pop(0)
        out.append(line)
    if words:
        out[-1] = _fit(out[-1] + " " + " ".join(words), draw, font, width)
    return "\n".join(_fit(line, draw, font, width) for line in out)


def save_captioned_grid(rows: Sequence[Sequence[Any]], captions: Sequence[Any], path: str | Path,
                        cell: int = CELL) -> Path:
    """A PNG grid of (3, H, W) images, scaled up (nearest neighbour) to at least `cell` pixels a side.

    `rows[i]` is one row of images; `captions[i]` is the row's caption (a str: one clip's frames) or a list with
    one caption per image (a row of separate samples).
    """
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[-2:]
    scale = max(1, -(-cell // min(h, w)))
    per_cell = not all(isinstance(t, str) for t in captions)
    ch, cw, pad, cap = h * scale, w * scale, 6, 32 if per_cell else 18
    ncol = max(len(r) for r in rows)
    canvas = Image.new("RGB", (pad + ncol * (cw + pad), len(rows) * (cap + ch + pad) + pad), "white")
    draw, font = ImageDraw.Draw(canvas), _caption_font(12)
    for i, (images, text) in enumerate(zip(rows, captions)):
        y = pad + i * (cap + ch + pad)
        if isinstance(text, str):
            draw.text((pad, y + 2), _fit(text, draw, font, canvas.width - 2 * pad), fill="black", font=font)
        for j, img in enumerate(images):
            x = pad + j * (cw + pad)
            if not isinstance(text, str):
                draw.multiline_text((x, y + 1), _wrap(str(text[j]), draw, font, cw), fill="black", font=font,
                                    spacing=2)
            canvas.paste(Image.fromarray(to_uint8(img)).resize((cw, ch), Image.NEAREST), (x, y + cap))
    path = target(path)
    canvas.save(path)
    return path
