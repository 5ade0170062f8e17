"""The digits the tiny models draw: scikit-learn's 8x8 digits, upsampled images and short moving/rotating clips.

Shared by the digit-accuracy metric (its classifier trains on these renderings) and by `ertacli.tinytrain`, which
trains the tiny models on them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MOTIONS = ("still", "left", "right", "up", "down", "cw", "ccw")
SHIFT = 0.25  # clip translation amplitude (normalised units: 1 = half the frame)
TURN = math.radians(50)  # total rotation over a clip
SCALE = 0.75  # digit size as a share of the video frame


@functools.lru_cache(maxsize=1)
def digits() -> tuple[Any, Any]:
    """(images (1797, 8, 8) float in [0, 1], labels (1797,) int64) from scikit-learn's load_digits."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


def render_images(imgs: Any, size: int) -> Any:
    """(N, 8, 8) [0, 1] -> (N, 1, size, size) latents in [-1, 1] (bilinear upsampling)."""
    import torch.nn.functional as F

    up = F.interpolate(imgs[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp(0, 1) * 2 - 1


def _theta(motion: str, frac: Any) -> Any:
    """Affine grid matrices (F, 2, 3) for one motion at clip positions frac in [-0.5, 0.5]."""
    import torch

    angle = torch.zeros_like(frac)
    tx, ty = torch.zeros_like(frac), torch.zeros_like(frac)
    if motion in ("left", "right"):
        tx = 2 * SHIFT * frac * (1 if motion == "right" else -1)
    elif motion in ("up", "down"):
        ty = 2 * SHIFT * frac * (1 if motion == "down" else -1)
    elif motion in ("cw", "ccw"):
        angle = TURN * frac * (1 if motion == "cw" else -1)  # +angle turns clockwise on screen (y points down)
    c, s = torch.cos(angle), torch.sin(angle)
    # output p = SCALE * R q + t  =>  input q = R^T (p - t) / SCALE
    r = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2) / SCALE
    t = -(r @ torch.stack([tx, ty], -1)[..., None])[..., 0]
    return torch.cat([r, t[..., None]], -1)


def render_videos(imgs: Any, motions: list[str], frames: int, size: int) -> Any:
    """(N, 8, 8) [0, 1] + one motion each -> (N, 1, frames, size, size) latents in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    frac = torch.linspace(-0.5, 0.5, frames)
    table = {m: _theta(m, frac) for m in set(motions)}
    theta = torch.cat([table[m] for m in motions])  # (N * frames, 2, 3)
    grid = F.affine_grid(theta, [len(theta), 1, size, size], align_corners=False)
    src = imgs[:, None, None].expand(-1, frames, 1, 8, 8).reshape(-1, 1, 8, 8)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(len(imgs), 1, frames, size, size).clamp(0, 1) * 2 - 1
