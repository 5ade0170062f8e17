"""Per-sample quality metrics (PSNR, SSIM, digit-acc; LPIPS and CLIP from perceptual) and compute_metrics."""

from __future__ import annotations

import math
from typing import Any, Sequence

from . import perceptual  # noqa: F401  registers lpips, lpips-vgg, clip
from .metric_registry import as_frames, available, get_metric, register_metric

__all__ = ["available", "compute_metrics", "get_metric", "psnr", "ssim", "digit_acc"]


def _check(pred: Any, ref: Any) -> tuple[Any, Any]:
    """Frames of pred and ref, which must have equal shapes."""
    p, r = as_frames(pred), as_frames(ref)
    if p.shape != r.shape:
        raise ValueError(f"metric shapes differ: {tuple(p.shape)} vs {tuple(r.shape)}")
    return p, r


@register_metric("psnr")
def psnr(pred: Any, ref: Any, **ctx: Any) -> float:
    """PSNR in dB (data range 1), mean over frames; identical inputs give float('inf')."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, r = _check(pred, ref)
    values = []
    for pf, rf in zip(p, r):
        if float((pf - rf).abs().max()) == 0.0:
            values.append(math.inf)
        else:
            values.append(float(peak_signal_noise_ratio(pf[None], rf[None], data_range=1.0)))
    return float(sum(values) / len(values))


@register_metric("ssim")
def ssim(pred: Any, ref: Any, **ctx: Any) -> float:
    """SSIM (data range 1, gaussian 11x11 window shrunk for tiny frames), mean over frames."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, r = _check(pred, ref)
    k = min(11, min(p.shape[-2:]))
    k = k if k % 2 == 1 else k - 1
    vals = structural_similarity_index_measure(
        p, r, data_range=1.0, kernel_size=k, sigma=1.5 * k / 11, reduction="none"
    )
    return float(vals.mean())


@register_metric("digit-acc")
def digit_acc(pred: Any, ref: Any = None, *, prompt: str | None = None, **ctx: Any) -> float:
    """Share of frames a load_digits classifier labels as the digit the prompt names (ref ignored; NaN if none)."""
    from .digit_classifier import digit_accuracy

    if prompt is None:
        raise ValueError("digit-acc needs the sample's prompt (compute_metrics(..., prompts=[...]))")
    return digit_accuracy(pred, prompt)


def compute_metrics(
    names: Sequence[str], preds: Sequence[Any], refs: Sequence[Any], **ctx: Any
) -> list[dict[str, float]]:
    """One dict {name: value} per sample; with ctx prompts=[...], each metric also gets its sample's prompt=."""
    fns = {name: get_metric(name) for name in names}
    if len(preds) != len(refs):
        raise ValueError(f"compute_metrics: {len(preds)} predictions vs {len(refs)} references")
    prompts = ctx.get("prompts")
    if prompts is not None and len(prompts) != len(preds):
        raise ValueError(f"compute_metrics: {len(preds)} predictions vs {len(prompts)} prompts")
    out = []
    for i, (p, r) in enumerate(zip(preds, refs)):
        extra = {"prompt": prompts[i]} if prompts is not None else {}
        out.append({name: fn(p, r, **ctx, **extra) for name, fn in fns.items()})
    return out

