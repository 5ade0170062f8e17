"""diffusers' MagCache on a pipeline with several denoisers (Wan2.2's `transformer` and `transformer_2`).

diffusers' MagCache counts steps per transformer (and per cache context), so on Wan2.2 its users calibrate and
configure each expert on its own: the expert's number of steps (`num_inference_steps`), and the magnitude ratios
its own calibration run prints. Here: one uncached run counts each expert's calls (its steps = its calls / the
calls a step makes), one calibration run with `MagCacheConfig(calibrate=True, num_inference_steps=n)` on each
expert prints their ratios (the first expert's streams finish first), and each expert gets its own config.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

from ..errors import UserError


def expert_steps(sampler, prompt: str, seed: int) -> list[int]:
    """Denoising steps each denoiser runs in one call, measured on an uncached run (forward pre-hooks)."""
    from .peer_hooks import denoisers_of

    modules = [m for _, m in denoisers_of(sampler.pipe)]
    calls = [0] * len(modules)
    handles = [m.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, m in enumerate(modules)]
    try:
        sampler.run([prompt], [seed])
    finally:
        for h in handles:
            h.remove()
    per_step, rest = divmod(sum(calls), sampler.steps)
    if rest or not per_step or any(c % per_step for c in calls):
        raise UserError(f"MagCache cannot cache every denoiser: {type(sampler.pipe).__name__} made {calls} calls "
                        f"per denoiser in {sampler.steps} steps, not a whole number of steps each")
    return [c // per_step for c in calls]


def parse_ratios(printed: str) -> list[list[float]]:
    """Every ratio list MagCache's calibration printed, in order."""
    return [[float(x) for x in found.split(",")] for found in re.findall(r"\[([-0-9.eE,\s]+)\]", printed)]


def expert_mag_ratios(sampler, prompt: str, seed: int) -> list[list[float]]:
    """Each expert's magnitude ratios, one per step it runs (the first stream's list its calibration printed)."""
    from diffusers import MagCacheConfig

    steps = expert_steps(sampler, prompt, seed)
    buf = io.StringIO()
    calibrating = PerDenoiser(tuple(MagCacheConfig(calibrate=True, num_inference_steps=n) for n in steps))
    calibrating.attach(sampler.pipe)
    try:
        with contextlib.redirect_stdout(buf):
            sampler.run([prompt], [seed])
    finally:
        calibrating.detach(sampler.pipe)
    found = parse_ratios(buf.getvalue())
    per = len(found) // len(steps) if len(found) % len(steps) == 0 else 0
    ratios = [found[i * per] for i in range(len(steps))] if per else []
    if not ratios or [len(r) for r in ratios] != steps:
        raise UserError("MagCache calibration printed no ratios per expert; this diffusers version changed its output")
    return ratios


@dataclass
class PerDenoiser:
    """One diffusers cache config per denoiser, in the pipeline's denoiser order, each enabled on its own."""

    configs: tuple

    def attach(self, pipe) -> None:
        from .peer_hooks import denoisers_of

        modules = denoisers_of(pipe)
        if len(modules) != len(self.configs):
            raise UserError(f"{type(pipe).__name__} holds {len(modules)} denoisers, the peer was configured for "
                            f"{len(self.configs)}")
        try:
            for (_, module), config in zip(modules, self.configs):
                module.enable_cache(config)
        except BaseException:
            self.detach(pipe)  # nothing left half-attached
            raise

    def detach(self, pipe) -> None:
        from .peer_hooks import denoisers_of

        for _, module in denoisers_of(pipe):
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()


def expert_configs(pipe, setting: float, ratios: list) -> PerDenoiser:
    """MagCache at threshold `setting` on each expert, with that expert's steps (its ratios' length) and ratios."""
    from diffusers import MagCacheConfig

    from .peer_hooks import denoisers_of

    n = len(denoisers_of(pipe))
    if len(ratios) != n or not all(isinstance(r, (list, tuple)) for r in ratios):
        raise UserError(f"MagCache cannot cache every denoiser: {type(pipe).__name__} holds {n} denoisers and its "
                        f"ratios come from a calibration of {len(ratios)}; calibrate it on this pipeline")
    return PerDenoiser(tuple(MagCacheConfig(threshold=setting, num_inference_steps=len(r), mag_ratios=list(r))
                             for r in ratios))
