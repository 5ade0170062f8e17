"""Save images, videos and grids from float tensors in [0, 1]."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        imageio.mimsave(gif, list(to_uint8(tensor.detach().float().cpu())), duration=1000 / fps, loop=0)
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
