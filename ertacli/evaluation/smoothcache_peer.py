"""SmoothCache (Liu et al., "SmoothCache: A Universal Inference Acceleration Technique for Diffusion Transformers")
through its PyPI package `dit-smoothcache` (optional extra `[peers]`).

The package's `SmoothCacheHelper` wraps named sub-layers of given block classes and serves a sub-layer's previous
output on the steps its schedule marks 0. The wheel (0.1.1) ships no calibration module, so the schedule comes from
the paper's rule, implemented here: per sub-layer type, the mean relative L1 change of its output between
consecutive steps of an uncached calibration run (its error curve) is accumulated since the last computed step;
while the sum stays below alpha the step is cached. Which sub-layers are wrapped per block class is registered data.

Limits, stated in the row: the helper keeps one cache per layer, not per CFG branch, so a pipeline calling the
transformer more than once per step (Wan with guidance) is not attached; and it caches sub-layers, so every call
still runs its blocks (NFE stays T, like PyramidAttentionBroadcast). A pipeline with several denoisers (Wan2.2)
is refused: the helper's step counter is per wrapped model. Its per-call `print`s are silenced.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

COMPONENTS = {"FluxTransformerBlock": ("attn", "ff"), "FluxSingleTransformerBlock": ("attn",),
              "WanTransformerBlock": ("attn1", "attn2", "ffn")}
"""Block class name -> the sub-layers SmoothCache wraps (their outputs are cached)."""


EXPERTS = "dit-smoothcache's helper counts steps per wrapped model, so the second expert would run the schedule from step 0"
"""Why a pipeline with several denoisers (Wan2.2's experts) is refused."""


def missing() -> str | None:
    """Why dit-smoothcache cannot run here (None when it is importable)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import SmoothCache  # noqa: F401
    except ImportError as exc:
        return f"dit-smoothcache is not installed ({exc.name or exc}); pip install 'ertacache[peers]'"
    return None


def _sublayers(transformer):
    """(component name, module) for every wrapped sub-layer of the registered block classes."""
    for block in transformer.modules():
        for comp in COMPONENTS.get(type(block).__name__, ()):
            if hasattr(block, comp):
                yield comp, getattr(block, comp)


def error_curves(sampler, prompt: str, seed: int) -> dict:
    """Per component: the mean relative L1 change of its outputs between consecutive transformer calls."""
    from .peer_hooks import refuse_experts, rel_l1

    refuse_experts("SmoothCache", sampler.pipe, EXPERTS)  # before its calibration run, not after
    prev, sums, counts = {}, {}, {}

    def hook(comp):
        def fn(module, args, out):
            y = out[0] if isinstance(out, tuple) else out
            if module in prev:
                k = len(sums.setdefault(comp, {}).setdefault(id(module), []))
                sums[comp][id(module)].append(rel_l1(y, prev[module]))
                counts[comp] = max(counts.get(comp, 0), k + 1)
            prev[module] = y.detach()
        return fn

    handles = [m.register_forward_hook(hook(c)) for c, m in _sublayers(sampler.transformer)]
    try:
        sampler.run([prompt], [seed])
    finally:
        for h in handles:
            h.remove()
    return {c: [sum(v[i] for v in per.values()) / len(per) for i in range(counts[c])] for c, per in sums.items()}


def schedule(curves: dict, alpha: float, steps: int) -> dict:
    """Per component, 1 (compute) or 0 (cached) per step: cached while the accumulated error stays below alpha."""
    out = {}
    for comp, curve in curves.items():
        acc, row = 0.0, [1]
        for k in range(1, steps):
            acc += curve[k - 1] if k - 1 < len(curve) else float("inf")
            keep = alpha <= 0 or acc >= alpha or k == steps - 1
            row.append(1 if keep else 0)
            acc = 0.0 if keep else acc
        out[comp] = row
    return out


@dataclass
class SmoothCachePeer:
    alpha: float
    num_inference_steps: int
    block_lists: tuple
    curves: dict | None = None

    def attach(self, pipe) -> None:
        import SmoothCache.smooth_cache_helper as sch
        from diffusers.hooks.hooks import StateManager

        from ..backbones import get_backbone
        from .peer_hooks import refuse_experts, register

        refuse_experts("SmoothCache", pipe, EXPERTS)
        branches = get_backbone(type(pipe).__name__).branches
        if len(branches) > 1 and getattr(pipe, "do_classifier_free_guidance", True):
            raise ValueError("SmoothCache's helper keeps one cache per layer, not per CFG branch; "
                             f"{type(pipe).__name__} calls the transformer per branch")
        sch.print = lambda *a, **k: None  # the helper prints on every wrapped call
        classes = sorted({type(b) for b in pipe.transformer.modules() if type(b).__name__ in COMPONENTS}, key=str)
        comps = sorted({c for names in COMPONENTS.values() for c in names})
        self.helper = sch.SmoothCacheHelper(pipe.transformer, classes, comps,
                                            schedule(self.curves or {}, self.alpha, self.num_inference_steps))
        self.helper.enable()
        register(pipe.transformer, ResetHook(StateManager(_Nothing), self.helper), "smoothcache_reset")

    def detach(self, pipe) -> None:
        from .peer_hooks import unregister

        unregister(pipe.transformer, ("smoothcache_reset",))
        self.helper.disable()


class _Nothing:
    def reset(self, *args, **kwargs) -> None:
        pass


def _reset_hook_class():
    from diffusers.hooks import ModelHook

    class ResetHook(ModelHook):
        """The pipeline's end-of-call reset of stateful hooks also restarts the helper's step counters."""

        _is_stateful = True

        def __init__(self, states, helper):
            super().__init__()
            self.states, self.helper = states, helper

        def reset_state(self, module):
            self.helper.reset_state()
            return module

    return ResetHook


def ResetHook(states, helper):  # noqa: N802 - a class built on first use (diffusers imported lazily)
    return _reset_hook_class()(states, helper)
