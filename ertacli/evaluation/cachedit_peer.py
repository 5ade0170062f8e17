"""cache-dit (optional extra `[peers]`) as a peer: `cache_dit.enable_cache` with DBCache, with or without its
TaylorSeer calibrator, attached and removed the way its users do (`enable_cache(pipe, ...)` / `disable_cache(pipe)`); on Wan2.2 cache-dit
hooks both experts itself.

DBCache computes the first Fn blocks every call and compares their residual with the previous call's; below the
residual-difference threshold the middle and last Bn blocks are served from its cache. We use F1B0 so that a
cached call runs no last block (NFE counts it as cached, like every other peer); threshold 0 is off.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass


def missing() -> str | None:
    """Why cache-dit cannot run here (None when it is importable)."""
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import cache_dit  # noqa: F401
    except ImportError as exc:
        return f"cache-dit is not installed ({exc.name or exc}); pip install 'ertacache[peers]'"
    return None


def quiet_logs() -> None:
    """cache-dit logs every enable/disable at INFO and WARNING (its own handler); peers tune over dozens of settings."""
    import importlib
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
    handler = getattr(importlib.import_module("cache_dit.logger"), "_default_handler", None)
    if handler is not None:
        handler.setLevel(logging.ERROR)


ISOLATION = """cache-dit runs on a copy of the transformer: after its disable_cache a later SeaCache on the same
transformer keeps no residual history (cache-dit 1.5.3), so the pipeline's own transformer is never handed to it"""


@dataclass
class CacheDitPeer:
    """One DBCache setting: residual-difference threshold, warm-up steps, T, TaylorSeer calibrator on/off."""

    threshold: float
    warmup: int
    num_inference_steps: int
    taylorseer: bool = False
    fn: int = 1
    bn: int = 0

    def configs(self) -> dict:
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        cache = DBCacheConfig(Fn_compute_blocks=self.fn, Bn_compute_blocks=self.bn,
                              residual_diff_threshold=float(self.threshold), max_warmup_steps=int(self.warmup),
                              num_inference_steps=int(self.num_inference_steps))
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=1) if self.taylorseer else None
        return {"cache_config": cache, "calibrator_config": calibrator}

    def attach(self, pipe) -> None:
        """cache_dit.enable_cache on copies of every denoiser swapped into the pipeline (see ISOLATION); cache-dit
        itself hooks both of Wan2.2's experts (`transformer`, `transformer_2`) from the pipeline."""
        import copy

        import cache_dit

        from .peer_hooks import denoisers_of

        self.originals = dict(denoisers_of(pipe))
        for name, module in self.originals.items():
            setattr(pipe, name, copy.deepcopy(module))
        quiet_logs()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cache_dit.enable_cache(pipe, **self.configs())
        except BaseException:
            self._restore(pipe)
            raise
        quiet_logs()

    def detach(self, pipe) -> None:
        """cache_dit.disable_cache, then the pipeline's own, untouched denoisers back in place."""
        import cache_dit

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cache_dit.disable_cache(pipe)
        finally:
            self._restore(pipe)

    def _restore(self, pipe) -> None:
        for name, module in self.originals.items():
            setattr(pipe, name, module)
