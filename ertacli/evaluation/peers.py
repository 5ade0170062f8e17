"""Peers: diffusers' built-in caches, each tuned over a small grid to land near a target NFE.

A peer is registered data: a name, a grid of settings, and a function turning one setting into a diffusers
cache config. NFE is counted the same way for every method: transformer calls in which the last block's own
computation ran (a cached or skipped call does not count), over every denoiser (Wan2.2's `transformer` and
`transformer_2`). A peer caches every denoiser the way its users do, or refuses in one line (never half-cached).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError


@dataclass(frozen=True)
class Peer:
    """One built-in cache: settings to try and how to build its config (T, setting, extra) -> config."""

    name: str
    config_class: str
    grid: tuple
    build: Callable[..., Any]
    calibrate: Callable[..., dict] | None = None  # (sampler, probe) -> extra the builds need (its own calibration)
    note: str = ""
    missing: Callable[[], str | None] | None = None  # why it cannot run here (None: it can); default: diffusers


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

    from .peer_hooks import denoisers_of

    if len(denoisers_of(pipe)) > 1:  # Wan2.2: each expert its own steps and ratios (see magcache_peer)
        from .magcache_peer import expert_configs

        return expert_configs(pipe, setting, extra["mag_ratios"])

    return MagCacheConfig(threshold=setting, num_inference_steps=T, mag_ratios=extra["mag_ratios"])


def _pab(T, setting, pipe, extra):
    from diffusers import PyramidAttentionBroadcastConfig

    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=setting,
                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                           current_timestep_callback=lambda: pipe.current_timestep)


def _fastercache(T, setting, pipe, extra):
    """FasterCache on attention (guidance-distilled: no uncond batch to skip). Setting = (skip range, top timestep):
    attention reused inside timesteps (-1, top). `top` stays below the first step's timestep (1000): diffusers'
    hook has nothing cached on its first call and fails there ('NoneType' object is not subscriptable) when the
    first step lies inside the range, which its default (-1, 681) avoids."""
    from diffusers import FasterCacheConfig

    from ..backbones import get_backbone

    branches = get_backbone(type(pipe).__name__).branches
    if len(branches) > 1 and getattr(pipe, "do_classifier_free_guidance", True):
        raise ValueError("FasterCache keeps one attention cache per block and handles CFG only as one batched "
                         f"uncond+cond call; this pipeline calls the transformer once per branch ({', '.join(branches)})")
    skip, top = setting
    return FasterCacheConfig(spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(-1, top),
                             current_timestep_callback=lambda: pipe.current_timestep,
                             attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True)


register_peer(Peer("FirstBlockCache", "FirstBlockCacheConfig",
                   (0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4, 0.6, 0.8), _fbc))
register_peer(Peer("TaylorSeer", "TaylorSeerCacheConfig",
                   tuple((i, b, t, o) for o in (1, 2) for t in (0, 2, 4) for b in (1, 2, 3) for i in (2, 3, 4, 5, 6)),
                   _taylorseer, note="lite mode; setting = (interval, first cached step, computed tail, order)"))
register_peer(Peer("MagCache", "MagCacheConfig", (0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0),
                   _magcache, calibrate=lambda s, p: {"mag_ratios": mag_ratios(s, p.prompts[0], p.seeds[0])}, note="mag_ratios from its own calibrate run"))
def _seacache(T, setting, pipe, extra):
    from .seacache_peer import SeaCachePeer

    threshold, max_consecutive = setting
    return SeaCachePeer(threshold, max_consecutive, T)


def _teacache(T, setting, pipe, extra):
    from .teacache import TeaCacheConfig

    fit = extra.get("teacache")
    if fit is None:
        raise UserError("TeaCache needs fitted coefficients: run `ertacache teacache-fit --model NAME` first")
    return TeaCacheConfig(threshold=setting, num_inference_steps=T, coefficients=tuple(fit["coefficients"]),
                          block_lists=tuple(extra["block_lists"]))


def _easycache(T, setting, pipe, extra):
    from .easycache import EasyCacheConfig

    threshold, warmup = setting
    return EasyCacheConfig(threshold=threshold, warmup=warmup, num_inference_steps=T)


def _cache_dit(taylorseer: bool):
    def build(T, setting, pipe, extra):
        from .cachedit_peer import CacheDitPeer

        threshold, warmup = setting
        return CacheDitPeer(threshold, warmup, T, taylorseer)

    return build


def _smoothcache(T, setting, pipe, extra):
    from .smoothcache_peer import SmoothCachePeer

    return SmoothCachePeer(setting, T, extra["block_lists"], extra.get("smoothcache_curves"))


def _smoothcache_calibrate(sampler, probe) -> dict:
    from .smoothcache_peer import error_curves

    return {"smoothcache_curves": error_curves(sampler, probe.prompts[0], probe.seeds[0])}


def _cache_dit_missing() -> str | None:
    from .cachedit_peer import missing

    return missing()


def _smoothcache_missing() -> str | None:
    from .smoothcache_peer import missing

    return missing()


_THRESHOLDS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0)
register_peer(Peer("SeaCache", "SeaCacheConfig", tuple((t, m) for m in (2, 4) for t in _THRESHOLDS), _seacache,
                   note="setting = (threshold, max consecutive cached); step index/sigma from the pipeline's "
                        "cache_context, or (FluxPipeline passes none) from our per-branch step adapter"))
register_peer(Peer("TeaCache", "TeaCacheConfig", (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                                                  0.6, 0.8, 1.0, 1.5, 2.0, 3.0), _teacache,
                   note="own hook; polynomial from `ertacache teacache-fit`", missing=lambda: None))
register_peer(Peer("EasyCache", "EasyCacheConfig", tuple((t, w) for w in (1, 2) for t in _THRESHOLDS), _easycache,
                   note="own hook; setting = (threshold, warm-up steps)", missing=lambda: None))
register_peer(Peer("cache-dit DBCache", "DBCacheConfig", tuple((t, w) for w in (1, 2) for t in _THRESHOLDS),
                   _cache_dit(False), note="F1B0; setting = (residual diff threshold, warm-up steps)",
                   missing=_cache_dit_missing))
register_peer(Peer("cache-dit DBCache+TaylorSeer", "DBCacheConfig", tuple((t, w) for w in (1, 2) for t in _THRESHOLDS),
                   _cache_dit(True), note="F1B0, TaylorSeer order 1; setting = (residual diff threshold, warm-up)",
                   missing=_cache_dit_missing))
register_peer(Peer("SmoothCache", "SmoothCacheHelper", (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8), _smoothcache,
                   calibrate=lambda s, p: _smoothcache_calibrate(s, p), missing=_smoothcache_missing,
                   note="dit-smoothcache's helper on attention/FF sub-layers; schedule from our error-curve "
                        "calibration (the wheel ships none): every call still runs its blocks"))
register_peer(Peer("PyramidAttentionBroadcast", "PyramidAttentionBroadcastConfig", (2, 3), _pab,
                   note="reuses attention only: every call still runs the blocks"))
register_peer(Peer("FasterCache", "FasterCacheConfig", tuple((n, top) for top in (681, 901) for n in (2, 3, 4)),
                   _fastercache, note="reuses attention only: every call still runs the blocks; setting = "
                                      "(attention skip range, top timestep of the reuse range)"))


def why_missing(name: str) -> str | None:
    """Why peer `name` cannot run in this environment (None when it can)."""
    peer = PEERS[name]
    if peer.missing is not None:
        return peer.missing()
    import diffusers

    return None if hasattr(diffusers, peer.config_class) else f"diffusers {diffusers.__version__} has no {peer.config_class}"


def available_peers() -> list[str]:
    """Peers that can run here (their diffusers config class or package is installed)."""
    return [name for name in PEERS if why_missing(name) is None]


class NfeCounter:
    """Counts denoiser calls in which the last block's first sub-module actually ran (plain torch hooks), over
    every (transformer, its last block) given: Wan2.2's two experts count together, `by_denoiser` each."""

    def __init__(self, transformer=None, last_block=None, *, pairs: tuple = ()):
        self.pairs = tuple(pairs) or ((transformer, last_block),)
        self.calls, self._ran, self._handles, self.by_denoiser = 0, False, [], [0] * len(self.pairs)

    @classmethod
    def of(cls, pipe, block_lists: tuple[str, ...]) -> "NfeCounter":
        """A counter over every denoiser of the pipeline (`transformer`, and Wan2.2's `transformer_2`)."""
        from .peer_hooks import denoisers_of

        return cls(pairs=tuple((m, last_block(m, block_lists)) for _, m in denoisers_of(pipe)))

    def __enter__(self) -> "NfeCounter":
        for i, (transformer, block) in enumerate(self.pairs):
            child = next(iter(block.children()))
            self._handles += [
                transformer.register_forward_pre_hook(lambda *a: setattr(self, "_ran", False)),
                child.register_forward_hook(lambda *a: setattr(self, "_ran", True)),
                transformer.register_forward_hook(lambda *a, i=i: self._count(i)),
            ]
        return self

    def reset(self) -> None:
        self.calls, self.by_denoiser = 0, [0] * len(self.pairs)

    def _count(self, i: int) -> None:
        self.calls += int(self._ran)
        self.by_denoiser[i] += int(self._ran)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def last_block(transformer, block_lists: tuple[str, ...]):
    """The final transformer block (from the backbone's registered block lists)."""
    for name in reversed(block_lists):
        group = getattr(transformer, name, None)
        if group is not None and len(group):
            return group[-1]
    raise UserError(f"{type(transformer).__name__}: no transformer blocks in {block_lists}")


@contextlib.contextmanager
def enabled(pipe, config):
    """A cache attached for the duration of the block, removed afterwards: a diffusers cache config (enabled on
    every denoiser, as its users do on Wan2.2's two experts), or one of ours with `attach(pipe)` / `detach(pipe)`
    (our hooks, cache-dit, SmoothCache), which attaches to every denoiser itself or refuses."""
    own = hasattr(config, "attach")
    config.attach(pipe) if own else enable_everywhere(pipe, config)
    try:
        yield
    finally:
        config.detach(pipe) if own else disable_everywhere(pipe)


def enable_everywhere(pipe, config) -> None:
    """`enable_cache(config)` on every denoiser; one line, and nothing left attached, when one has no such method."""
    from .peer_hooks import denoisers_of

    modules = denoisers_of(pipe)
    lacking = [f"{name} ({type(m).__name__})" for name, m in modules if not hasattr(m, "enable_cache")]
    if lacking:
        peer = next((p.name for p in PEERS.values() if p.config_class == type(config).__name__), type(config).__name__)
        raise UserError(f"{peer} cannot cache every denoiser: {type(pipe).__name__}'s "
                        f"{', '.join(lacking)} has no enable_cache, and caching the other denoisers only would run "
                        f"the pipeline half-cached")
    done = []
    try:
        for _, module in modules:
            module.enable_cache(config)
            done.append(module)
    except BaseException:
        for module in done:
            module.disable_cache()
        raise


def disable_everywhere(pipe) -> None:
    from .peer_hooks import denoisers_of

    for _, module in denoisers_of(pipe):
        if getattr(module, "is_cache_enabled", False):
            module.disable_cache()


def mag_ratios(sampler, prompt: str, seed: int) -> list:
    """MagCache's own calibration: one uncached run with calibrate=True; the ratios it prints, parsed. With
    several denoisers (Wan2.2), one list per expert, as long as the steps it runs (`magcache_peer`)."""
    from diffusers import MagCacheConfig

    from .peer_hooks import denoisers_of

    if len(denoisers_of(sampler.pipe)) > 1:
        from .magcache_peer import expert_mag_ratios

        return expert_mag_ratios(sampler, prompt, seed)
    buf = io.StringIO()
    cfg = MagCacheConfig(calibrate=True, num_inference_steps=sampler.steps)
    with enabled(sampler.pipe, cfg), contextlib.redirect_stdout(buf):
        sampler.run([prompt], [seed])
    found = re.findall(r"\[([-0-9.eE,\s]+)\]", buf.getvalue())
    if not found:
        raise UserError("MagCache calibration printed no ratios; this diffusers version changed its output")
    return [float(x) for x in found[0].split(",")]
