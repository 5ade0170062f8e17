"""Pluggable per-sample quality metrics on [0, 1] images (3,H,W) or videos (F,3,H,W)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ertacli.errors import UserError

MetricFn = Callable[..., float]
_METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register fn(pred, ref, **ctx) -> float under name."""

    def deco(fn: MetricFn) -> MetricFn:
        _METRICS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Registered metric names, sorted."""
    return sorted(_METRICS)


def get_metric(name: str) -> MetricFn:
    """The metric function for name, or a UserError listing the available ones."""
    try:
        return _METRICS[name]
    except KeyError:
        raise UserError(f"unknown metric {name!r}; available: {', '.join(available())}") from None


def as_frames(x: Any) -> Any:
    """(3,H,W) -> (1,3,H,W); (F,3,H,W) stays; float32 cpu."""
    import torch

    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() == 4:
        return x
    raise ValueError(f"metric input must be (3,H,W) or (F,3,H,W), got shape {tuple(x.shape)}")


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
    from ertacli.tinytrain.classifier import digit_accuracy

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


from . import perceptual as _perceptual  # noqa: E402,F401  registers lpips, lpips-vgg, clip
