"""A digit classifier for generated samples: scikit-learn on load_digits, position- and size-normalised 8x8 input."""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

from .digit_data import DIGIT_WORDS, MOTIONS, digits, render_images, render_videos

_TOKEN = re.compile(r"[a-z]+|\d+")
CLIP_ROUNDS = 3  # random clip frames per digit in the training set
THRESHOLD = 0.3  # share of the frame's brightest value that counts as ink when cropping


def prompt_digit(prompt: str) -> int | None:
    """The digit a prompt names (first digit word or single numeral), or None when it names none."""
    for tok in _TOKEN.findall(prompt.lower()):
        if tok in DIGIT_WORDS:
            return DIGIT_WORDS.index(tok)
        if len(tok) == 1 and tok.isdigit():
            return int(tok)
    return None


def normalise(gray: Any) -> Any:
    """(N, H, W) in [0, 1] -> (N, 64): crop each to its ink bounding box, centre on a square, resize to 8x8."""
    import torch
    import torch.nn.functional as F

    out = []
    for g in gray.float():
        ink = g > THRESHOLD * float(g.max()) if float(g.max()) > 0 else torch.ones_like(g, dtype=torch.bool)
        rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
        crop = g[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]
        side = max(crop.shape)
        sq = torch.zeros(side, side)
        top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        sq[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        small = F.interpolate(sq[None, None], size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        out.append(small.flatten())
    x = torch.stack(out)
    return (x / x.amax(1, keepdim=True).clamp(min=1e-6)).numpy()


def _training_set(seed: int) -> tuple[Any, Any]:
    """Normalised features and labels: the raw digits, 16/32 px upsampled images and moving-clip frames."""
    import numpy as np
    import torch

    imgs, labels = digits()
    gen = torch.Generator().manual_seed(seed)
    feats, ys = [normalise(imgs)], [labels.numpy()]
    for size in (16, 32):
        feats.append(normalise((render_images(imgs, size)[:, 0] + 1) / 2))
        ys.append(labels.numpy())
    for _ in range(CLIP_ROUNDS):
        motions = [MOTIONS[int(i)] for i in torch.randint(len(MOTIONS), (len(imgs),), generator=gen)]
        clips = (render_videos(imgs, motions, 9, 16)[:, 0] + 1) / 2  # (N, 9, 16, 16)
        pick = torch.randint(9, (len(imgs),), generator=gen)
        feats.append(normalise(clips[torch.arange(len(imgs)), pick]))
        ys.append(labels.numpy())
    return np.concatenate(feats), np.concatenate(ys)


@functools.lru_cache(maxsize=1)
def classifier(seed: int = 0) -> Any:
    """An RBF support vector machine on the normalised 8x8 features, cached per process (~3 s to fit).

    No per-feature standardisation: it inflates pixels that are almost always dark in the training digits,
    so a faint stroke there in a generated frame would dominate the kernel distance.
    """
    from sklearn.svm import SVC

    x, y = _training_set(seed)
    return SVC(C=5.0).fit(x, y)


def to_gray(media: Any) -> Any:
    """(3, H, W) or (F, 3, H, W) in [0, 1] -> (F, H, W) gray frames."""
    import torch

    x = media.detach().to("cpu", torch.float32)
    x = x[None] if x.dim() == 3 else x
    return x.mean(1)


def predict(media: Any) -> list[int]:
    """Predicted digit per frame of an image (3, H, W) or a video (F, 3, H, W)."""
    return [int(v) for v in classifier().predict(normalise(to_gray(media)))]


def digit_accuracy(media: Any, prompt: str) -> float:
    """Share of frames classified as the prompted digit; NaN when the prompt names no digit."""
    want = prompt_digit(prompt)
    if want is None:
        return float("nan")
    preds = predict(media)
    return sum(p == want for p in preds) / len(preds)


def batch_accuracy(medias: Sequence[Any], prompts: Sequence[str]) -> float:
    """Mean digit accuracy over samples that name a digit."""
    vals = [digit_accuracy(m, p) for m, p in zip(medias, prompts)]
    vals = [v for v in vals if v == v]
    return sum(vals) / len(vals) if vals else float("nan")
