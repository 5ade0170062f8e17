"""The metric registry: fn(pred, ref, **ctx) -> float per name, on [0, 1] images (3,H,W) or videos (F,3,H,W)."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UserError

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
