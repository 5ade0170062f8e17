"""Timestep schedules: uniform cache placement, timestep adjustment (docs/method.md "fit"), and the live schedule."""

from __future__ import annotations

import math
from typing import Callable, Sequence


def uniform_computed_steps(T: int, n_cached: int) -> list[int]:
    """Computed steps of the uniform cache: c_j = floor(j (T-1) / (T-|S|-1) + 1/2) (docs/method.md "Uniform cache")."""
    n_comp = T - n_cached
    if n_comp < 2:
        raise ValueError(f"a uniform cache needs at least 2 computed steps (T={T}, cached={n_cached})")
    return sorted({math.floor(j * (T - 1) / (n_comp - 1) + 0.5) for j in range(n_comp)})


def uniform_cached_steps(T: int, n_cached: int) -> list[int]:
    """Cached steps of the uniform cache: every step that `uniform_computed_steps` leaves out."""
    computed = set(uniform_computed_steps(T, n_cached))
    return [k for k in range(T) if k not in computed]


def phi_value(numerator: float, denominator: float) -> float:
    """phi_k = clip(1 - ||v~_k - v_k|| / ||v_k - v_{k-1}||, 0, 1); a zero denominator gives 0 (docs/method.md "fit")."""
    if denominator <= 0.0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - numerator / denominator))


def next_sigma(s_adj: float, s_base: float, d_base: float, phi: float) -> float:
    """s'_{k+1} = s'_k - phi_k * d_k * (s'_k / s_k): rescale the remaining budget, shrink a cached interval."""
    if s_base == 0.0:
        return 0.0
    return s_adj - phi * d_base * (s_adj / s_base)


def adjusted_sigmas(base: Sequence[float], phis: Sequence[float]) -> list[float]:
    """Walk k = 0..T-1 from s'_0 = s_0 applying `next_sigma`; s'_T is set to exactly 0."""
    T = len(base) - 1
    if len(phis) != T:
        raise ValueError(f"need one phi per step: {T} steps, {len(phis)} phis")
    out = [float(base[0])]
    for k in range(T):
        out.append(next_sigma(out[k], float(base[k]), float(base[k]) - float(base[k + 1]), float(phis[k])))
    out[T] = 0.0
    return out


def phi_summary(phis: dict[int, float]) -> dict:
    """Distribution of phi over the cached steps: counts at 0, in (0,1), at 1, and min/median/max."""
    vals = sorted(phis.values())
    if not vals:
        return {"cached": 0, "zero": 0, "partial": 0, "one": 0, "min": None, "median": None, "max": None}
    mid = len(vals) // 2
    median = vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])
    return {
        "cached": len(vals),
        "zero": sum(v == 0.0 for v in vals),
        "partial": sum(0.0 < v < 1.0 for v in vals),
        "one": sum(v == 1.0 for v in vals),
        "min": vals[0],
        "median": median,
        "max": vals[-1],
    }


class LiveSchedule:
    """The sigmas a run samples with: fixed (a fitted plan) or grown step by step (a fit pass).

    `phi_fn(k)` returns phi_k when the scheduler is about to take step k; for a fixed schedule it is None.
    """

    def __init__(self, base: Sequence[float], fixed: Sequence[float] | None = None,
                 phi_fn: Callable[[int], float] | None = None):
        self.base = [float(s) for s in base]
        self.T = len(self.base) - 1
        self.phi_fn = phi_fn
        self.phis: dict[int, float] = {}
        if fixed is not None:
            if len(fixed) != len(self.base):
                raise ValueError("adjusted and base sigmas differ in length")
            self.sigmas = [float(s) for s in fixed]
        else:
            self.sigmas = [self.base[0]] + [math.nan] * self.T

    def reset(self) -> None:
        """Start a new run: a growing schedule forgets everything past s'_0."""
        if self.phi_fn is not None:
            self.sigmas = [self.base[0]] + [math.nan] * self.T
            self.phis = {}

    def ratio(self, k: int) -> float:
        """s'_k / s_k: the factor the model's timestep input is scaled by at step k."""
        if self.sigmas[k] == self.base[k]:
            return 1.0
        return self.sigmas[k] / self.base[k]

    def advance(self, k: int) -> tuple[float, float]:
        """(s'_k, s'_{k+1}) for the scheduler's step k, finalising phi_k first on a growing schedule."""
        if self.phi_fn is not None:
            phi = float(self.phi_fn(k))
            self.phis[k] = phi
            nxt = next_sigma(self.sigmas[k], self.base[k], self.base[k] - self.base[k + 1], phi)
            self.sigmas[k + 1] = 0.0 if k + 1 == self.T else nxt
        return self.sigmas[k], self.sigmas[k + 1]


def make_planned_scheduler(scheduler, live: LiveSchedule):
    """A FlowMatchEulerDiscreteScheduler subclass instance that steps by the live schedule's sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class PlannedFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
        """Euler flow matching whose interval at step k is s'_{k+1} - s'_k from a LiveSchedule."""

        def step(self, model_output, timestep, sample, *args, **kwargs):
            if self.step_index is None:
                self._init_step_index(timestep)
            k = self.step_index
            s_k, s_next = self.live.advance(k)  # `live` may be replaced (a plan transferred to another T)
            self.sigmas[k] = s_k
            self.sigmas[k + 1] = s_next
            return super().step(model_output, timestep, sample, *args, **kwargs)

    planned = PlannedFlowMatchEulerScheduler.from_config(scheduler.config)
    planned.live = live
    return planned
