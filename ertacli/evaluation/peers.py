"""Peers: diffusers' built-in caches, each tuned over a small grid to land near a target NFE.

A peer is registered data: a name, a grid of settings, and a function turning one setting into a diffusers
cache config. NFE is counted the same way for every method: transformer calls in which the last block's own
computation ran (a cached or skipped call does not count).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError


@dataclass(frozen=True)
class Peer:
    """One built-in cache: settings to try and how to build its config (T, setting, extra) -> config."""

    name: str
    config_class: str
    grid: tuple
    build: Callable[..., Any]
    needs_calibration: bool = False
    note: str = ""


PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> None:
    PEERS[peer.name] = peer


def _fbc(T, setting, pipe, extra):
    from diffusers import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=setting)


def _taylorseer(T, setting, pipe, extra):
    from diffusers import TaylorSeerCacheConfig

    interval, before, tail, order = setting  # tail: the last `tail` steps always computed (0: none)
    return TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=before, max_order=order,
                                 disable_cache_after_step=T - tail if tail else None, use_lite_mode=True,
                                 taylor_factors_dtype=None)


def _magcache(T, setting, pipe, extra):
    from diffusers import MagCacheConfig

    return MagCacheConfig(threshold=setting, num_inference_steps=T, mag_ratios=extra["mag_ratios"])


def _pab(T, setting, pipe, extra):
    from diffusers import PyramidAttentionBroadcastConfig

    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=setting,
                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                           current_timestep_callback=lambda: pipe.current_timestep)


def _fastercache(T, setting, pipe, extra):
    from diffusers import FasterCacheConfig

    return FasterCacheConfig(spatial_attention_block_skip_range=setting,
                             spatial_attention_timestep_skip_range=(-1, 1001),
                             current_timestep_callback=lambda: pipe.current_timestep,
                             attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True)


register_peer(Peer("FirstBlockCache", "FirstBlockCacheConfig",
                   (0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4, 0.6, 0.8), _fbc))
register_peer(Peer("TaylorSeer", "TaylorSeerCacheConfig",
                   tuple((i, b, t, o) for o in (1, 2) for t in (0, 2, 4) for b in (1, 2, 3) for i in (2, 3, 4, 5, 6)),
                   _taylorseer, note="lite mode; setting = (interval, first cached step, computed tail, order)"))
register_peer(Peer("MagCache", "MagCacheConfig", (0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0),
                   _magcache, needs_calibration=True, note="mag_ratios from its own calibrate run"))
register_peer(Peer("PyramidAttentionBroadcast", "PyramidAttentionBroadcastConfig", (2, 3), _pab,
                   note="reuses attention only: every call still runs the blocks"))
register_peer(Peer("FasterCache", "FasterCacheConfig", (2, 3), _fastercache,
                   note="reuses attention only: every call still runs the blocks"))


def available_peers() -> list[str]:
    """Peers whose config class the installed diffusers has."""
    import diffusers

    return [name for name, p in PEERS.items() if hasattr(diffusers, p.config_class)]


@dataclass
class NfeCounter:
    """Counts transformer calls in which the last block's first sub-module actually ran (plain torch hooks)."""

    transformer: Any
    last_block: Any
    calls: int = 0
    _ran: bool = False
    _handles: list = field(default_factory=list)

    def __enter__(self) -> "NfeCounter":
        child = next(iter(self.last_block.children()))
        self._handles = [
            self.transformer.register_forward_pre_hook(lambda *a: setattr(self, "_ran", False)),
            child.register_forward_hook(lambda *a: setattr(self, "_ran", True)),
            self.transformer.register_forward_hook(lambda *a: self._count()),
        ]
        return self

    def _count(self) -> None:
        self.calls += int(self._ran)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def last_block(transformer, block_lists: tuple[str, ...]):
    """The final transformer block (from the backbone's registered block lists)."""
    for name in reversed(block_lists):
        group = getattr(transformer, name, None)
        if group is not None and len(group):
            return group[-1]
    raise UserError(f"{type(transformer).__name__}: no transformer blocks in {block_lists}")


@contextlib.contextmanager
def enabled(pipe, config):
    """A diffusers cache attached for the duration of the block, removed afterwards."""
    pipe.transformer.enable_cache(config)
    try:
        yield
    finally:
        pipe.transformer.disable_cache()


def mag_ratios(sampler, prompt: str, seed: int) -> list[float]:
    """MagCache's own calibration: one uncached run with calibrate=True; the ratios it prints, parsed."""
    from diffusers import MagCacheConfig

    buf = io.StringIO()
    cfg = MagCacheConfig(calibrate=True, num_inference_steps=sampler.steps)
    with enabled(sampler.pipe, cfg), contextlib.redirect_stdout(buf):
        sampler.run([prompt], [seed])
    found = re.findall(r"\[([-0-9.eE,\s]+)\]", buf.getvalue())
    if not found:
        raise UserError("MagCache calibration printed no ratios; this diffusers version changed its output")
    return [float(x) for x in found[0].split(",")]
