"""Offline training data: scikit-learn's 8x8 digits, upsampled images, short moving/rotating clips, captions."""

from __future__ import annotations

import functools
import math
import random
from typing import Any

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADJECTIVES = (
    "thin", "thick", "bold", "neat", "messy", "slanted", "small", "large", "curly", "faded", "hurried", "careful",
    "tidy", "shaky", "rough", "blocky", "round", "narrow", "wide", "bright", "simple", "plain", "scribbled",
    "quick", "clean", "smudged", "crooked", "elegant", "tiny", "big", "sharp", "soft",
)
STYLES = (
    "drawn in thin strokes", "written with a marker", "in faded ink", "in pencil", "with a long tail",
    "written quickly", "on a dark background", "drawn by hand", "in white chalk", "with thick lines",
    "sketched lightly", "written carefully", "in bold strokes", "with a small loop", "in neat handwriting",
)
IMAGE_TEMPLATES = (
    "a handwritten {d}", "a {a} handwritten {d}", "the digit {d}", "the digit {d} {s}", "the number {d}",
    "a {a} {d}", "a {a} digit {d}", "{d}", "a picture of the number {d}", "handwritten {d} {s}",
    "a {a} number {d} {s}", "the {a} digit {d}", "an image of a {a} {d}", "a {d} written by hand",
)
MOTIONS = ("still", "left", "right", "up", "down", "cw", "ccw")
MOTION_PHRASES = {
    "still": ("standing still", "holding still", "not moving", "staying in place"),
    "left": ("drifting left", "sliding to the left", "moving left", "gliding left"),
    "right": ("drifting right", "sliding to the right", "moving right", "gliding right"),
    "up": ("floating up", "moving up", "rising", "drifting upwards"),
    "down": ("sinking", "falling", "moving down", "drifting downwards"),
    "cw": ("rotating clockwise", "turning clockwise", "spinning clockwise", "twisting clockwise"),
    "ccw": ("rotating counterclockwise", "turning anticlockwise", "spinning counterclockwise",
            "twisting anticlockwise"),
}
VIDEO_TEMPLATES = ("{c} {m}", "the digit {d} {m}", "a {a} {d} {m}", "a handwritten {d} {m}", "the number {d} {m}")
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


def _name(rng: random.Random, digit: int) -> str:
    """The digit as a word (two times in three) or a numeral."""
    return DIGIT_WORDS[digit] if rng.random() < 2 / 3 else str(digit)


def image_caption(rng: random.Random, digit: int) -> str:
    """A free-text caption naming the digit."""
    t = rng.choice(IMAGE_TEMPLATES)
    return t.format(d=_name(rng, digit), a=rng.choice(ADJECTIVES), s=rng.choice(STYLES))


def video_caption(rng: random.Random, digit: int, motion: str) -> str:
    """A free-text caption naming the digit and (nine times in ten) its motion."""
    m = rng.choice(MOTION_PHRASES[motion])
    if motion == "still" and rng.random() < 0.5:
        return image_caption(rng, digit)
    t = rng.choice(VIDEO_TEMPLATES)
    return t.format(c=image_caption(rng, digit), d=_name(rng, digit), a=rng.choice(ADJECTIVES), m=m)


def caption_bank(video: bool, motions: tuple[str, ...], per_group: int,
                 seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Captions and, per caption, its (digit, index into motions); images take motion 0 ("still") alone."""
    rng = random.Random(seed)
    texts, keys = [], []
    motions = tuple(motions) if video else MOTIONS[:1]
    for digit in range(10):
        for mi, motion in enumerate(motions):
            for _ in range(per_group):
                texts.append(video_caption(rng, digit, motion) if video else image_caption(rng, digit))
                keys.append((digit, mi))
    return texts, keys


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
