"""A plan calibrated at T steps run at T' steps (SPEC "Plans across settings", docs/method.md "Step-count transfer").

The schedule and the per-step coefficients are read as functions of sigma, not of the step index: each computed
step j maps to the new step whose sigma is nearest s_j (the first step of a stream and the last step stay
computed); then the longest run of cached steps is split at its middle, or the computed step whose neighbours are
closest is dropped, until the computed count is the plan's NFE share of the new calls; gains and a/b are
interpolated linearly in sigma; the timestep adjustment is dropped (phi = 1). Small pure functions, then
`transfer_plan` (Plan -> Plan).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import PlanMismatch

RULE = ("sigma-nearest computed steps, split longest cached run / drop closest computed step, "
        "coefficients linear in sigma, phi = 1")


def nearest_step(sigmas: Sequence[float], s: float, lo: int, hi: int) -> int:
    """SPEC: the step in [lo, hi] whose sigma is nearest s (a tie goes to the earlier step)."""
    return min(range(lo, hi + 1), key=lambda k: (abs(float(sigmas[k]) - s), k))


def mapped_computed(old_sigmas: Sequence[float], computed: Sequence[int], new_sigmas: Sequence[float],
                    lo: int, hi: int, keep: Sequence[int] = ()) -> set[int]:
    """SPEC: each computed step j goes to the new step in [lo, hi] nearest s_j; the steps `keep` stay computed."""
    return {nearest_step(new_sigmas, float(old_sigmas[j]), lo, hi) for j in computed} | set(keep)


def computed_count(share: float, calls: int) -> int:
    """SPEC: the plan's NFE share of `calls` new calls, rounded half up, at least min(2, calls) and at most calls."""
    return max(min(2, calls), min(calls, math.floor(share * calls + 0.5)))


def cached_runs(computed: set[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of steps in [lo, hi] that are not computed, in step order."""
    runs, start = [], None
    for k in range(lo, hi + 2):
        if k <= hi and k not in computed:
            start = k if start is None else start
        elif start is not None:
            runs.append((start, k - 1))
            start = None
    return runs


def split_longest_run(computed: set[int], lo: int, hi: int) -> set[int]:
    """SPEC: compute the middle step of the longest run of cached steps (the earliest of equal runs)."""
    runs = cached_runs(computed, lo, hi)
    if not runs:
        raise ValueError("no cached step left to compute")
    first, last = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    return computed | {(first + last) // 2}


def drop_closest(computed: set[int], keep: Sequence[int], hi: int) -> set[int]:
    """SPEC: cache the computed step whose computed neighbours are closest (next - previous; the earliest of equal
    ones); the steps `keep` stay; a step with no computed step after it counts `hi + 1` as its next."""
    steps = sorted(computed)
    gaps = [((steps[i + 1] if i + 1 < len(steps) else hi + 1) - steps[i - 1], k)
            for i, k in enumerate(steps) if i > 0 and k not in keep]
    if not gaps:
        raise ValueError("no computed step can be dropped")
    return computed - {min(gaps)[1]}


def fit_count(computed: set[int], n: int, lo: int, hi: int, keep: Sequence[int]) -> set[int]:
    """SPEC: split or drop until exactly n steps of [lo, hi] are computed."""
    out = set(computed)
    while len(out) < n:
        out = split_longest_run(out, lo, hi)
    while len(out) > n:
        out = drop_closest(out, keep, hi)
    return out


def interpolate(points: Sequence[tuple[float, Any]], s: float) -> Any:
    """SPEC: the value at sigma s, linear between the two points around s, the end value outside (floats, lists
    of floats or tensors)."""
    pts = sorted(points, key=lambda p: p[0])
    if s <= pts[0][0]:
        return pts[0][1]
    if s >= pts[-1][0]:
        return pts[-1][1]
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if s in (s0, s1):
            return v0 if s == s0 else v1  # at a calibrated step: its value exactly
        if s0 < s < s1:
            t = (s - s0) / (s1 - s0)
            if isinstance(v0, list):
                return [a + t * (b - a) for a, b in zip(v0, v1)]
            return v0 + t * (v1 - v0)
    raise AssertionError("unreachable")


def stream_ranges(streams: dict[str, Sequence[int]], old_sigmas: Sequence[float],
                  new_sigmas: Sequence[float], T_new: int, split: int | None = None) -> dict[str, list[int]]:
    """Each branch's new [first, last]: with `split` (the pipeline's own first step of the later expert, Wan2.2's
    boundary_ratio) the streams from step 0 end before it and the others start there; else the new steps whose
    nearest old step (in sigma) is in its old range."""
    if split is not None:
        if not 0 < split < T_new:
            raise ValueError(f"the experts' boundary falls at step {split} of {T_new}: one expert runs no step")
        return {b: [0, split - 1] if int(first) == 0 else [split, T_new - 1] for b, (first, _) in streams.items()}
    last = max(int(r[1]) for r in streams.values())  # the old steps (not the final sigma 0)
    owner = [nearest_step(old_sigmas, float(new_sigmas[k]), 0, last) for k in range(T_new)]
    out = {}
    for b, (first, last) in streams.items():
        mine = [k for k in range(T_new) if first <= owner[k] <= last]
        if not mine:
            raise ValueError(f"stream {b} (steps {first}-{last}) gets no step at {T_new} steps")
        out[b] = [min(mine), max(mine)]
    return out


def branch_counts(shares: dict[str, float], calls: dict[str, int], nfe: int | None) -> dict[str, int]:
    """Computed calls per branch: each branch's share of its new calls, or a total `nfe` split in proportion to
    those (largest remainders first)."""
    counts = {b: computed_count(shares[b], calls[b]) for b in shares}
    if nfe is None:
        return counts
    want = {b: shares[b] * calls[b] for b in shares}
    scale = nfe / sum(want.values())
    exact = {b: min(calls[b], max(min(2, calls[b]), want[b] * scale)) for b in want}
    counts = {b: math.floor(v) for b, v in exact.items()}
    for b in sorted(exact, key=lambda b: counts[b] - exact[b]):  # largest remainder first
        if sum(counts.values()) < nfe and counts[b] < calls[b]:
            counts[b] += 1
    return counts


def step_count(sigmas: Sequence[float]) -> int:
    """The steps a sigma list is for: its length less the final 0 when it has one."""
    return len(sigmas) - 1 if len(sigmas) > 1 and float(sigmas[-1]) == 0.0 else len(sigmas)


def transferred_steps(plan, new_sigmas: Sequence[float], nfe_share: float | None = None, nfe: int | None = None,
                      T_new: int | None = None,
                      split: int | None = None) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
    """(cached steps per branch, streams) of `plan` at T_new steps (default: those of `new_sigmas`)."""
    old = [float(s) for s in plan.base_sigmas]
    T_new = step_count(new_sigmas) if T_new is None else T_new
    streams = stream_ranges(plan.streams, old, new_sigmas, T_new, split) if plan.streams else None
    span = lambda b, st, T: tuple(int(x) for x in (st or {}).get(b, (0, T - 1)))
    calls = {b: span(b, streams, T_new)[1] - span(b, streams, T_new)[0] + 1 for b in plan.branches}
    shares = {b: (nfe_share if nfe_share is not None else (plan.calls(b) - len(plan.cached_steps.get(b, [])))
                  / plan.calls(b)) for b in plan.branches}
    counts = branch_counts(shares, calls, nfe)
    cached = {}
    for b in plan.branches:
        (f0, l0), (lo, hi) = span(b, plan.streams, plan.steps), span(b, streams, T_new)
        old_cached = set(plan.cached_steps.get(b, []))
        keep = [lo] + ([T_new - 1] if hi == T_new - 1 else [])
        comp = mapped_computed(old, [k for k in range(f0, l0 + 1) if k not in old_cached], new_sigmas, lo, hi, keep)
        comp = fit_count(comp, max(counts[b], len(keep)), lo, hi, keep)
        cached[b] = [k for k in range(lo, hi + 1) if k not in comp]
    return cached, streams


def _coeff_points(plan, values: dict) -> list[tuple[float, Any]]:
    return [(float(plan.base_sigmas[int(k)]), v) for k, v in values.items()]


def transferred_coeffs(plan, cached: dict[str, list[int]],
                       new_sigmas: Sequence[float]) -> tuple[dict | None, dict | None, Any]:
    """(rectify entry, rectify tensors, predictor gain c) of `plan` on the new cached steps, linear in sigma."""
    rect, tensors, c = plan.rectify, None, plan.predictor.get("c", 0.0)
    if isinstance(c, dict):  # a step without a fitted gain has gain 1 (Predictor.gain)
        gains = {b: {str(k): c.get(b, {}).get(str(k), 1.0) for k in plan.cached_steps.get(b, [])} for b in c}
        c = {b: {str(k): float(interpolate(_coeff_points(plan, g), float(new_sigmas[k]))) for k in cached[b]}
             for b, g in gains.items() if g and b in cached}
    if rect and rect.get("enabled") and rect.get("granularity") == "scalar":
        scalar = {b: {str(k): interpolate(_coeff_points(plan, d), float(new_sigmas[k])) for k in cached.get(b, [])}
                  for b, d in rect.get("scalar", {}).items() if d}
        rect = dict(rect, scalar=scalar)
    elif rect and rect.get("enabled"):
        old = plan.coeffs()
        tensors = {}
        for b, d in old.items():
            for i, ab in enumerate(("a", "b")):
                pts = [(float(plan.base_sigmas[k]), pq[i]) for k, pq in d.items()]
                for k in cached.get(b, []):
                    tensors[f"{b}.{k}.{ab}"] = interpolate(pts, float(new_sigmas[k])).contiguous()
    return rect, tensors, c


def transfer_plan(plan, new_sigmas: Sequence[float], nfe_share: float | None = None, nfe: int | None = None,
                  steps: int | None = None, split: int | None = None):
    """The plan at `steps` steps (default: those of `new_sigmas`, the call's scheduler sigmas with the final 0):
    Plan -> Plan. `split`: where the pipeline switches experts at that step count (see `stream_ranges`).

    Refuses in one line (PlanMismatch) what cannot transfer: a plan that records no sigmas, a target it cannot meet.
    """
    sig = [float(s) for s in new_sigmas]
    T_new = step_count(sig) if steps is None else steps
    redo = f"re-run calibration at steps {T_new} (`ertacache search` then `fit`, or ertacli.calibrate)"
    if not plan.base_sigmas or not sig or len(sig) < T_new:
        raise PlanMismatch(f"{plan.where} was made with steps {plan.steps}, this run has {T_new}, and a plan "
                           f"transfers to another step count only with sigmas on both sides (a sigma scheduler): "
                           f"{redo}")
    if nfe_share is not None and not 0 < nfe_share <= 1:
        raise PlanMismatch(f"nfe_share {nfe_share} is not in (0, 1]: give the computed share of the transformer calls")
    try:
        cached, streams = transferred_steps(plan, sig, nfe_share, nfe, T_new, split)
    except ValueError as exc:
        raise PlanMismatch(f"{plan.where} cannot transfer to steps {T_new} ({exc}): {redo}")
    rect, tensors, c = transferred_coeffs(plan, cached, sig)
    settings = dict(plan.settings, steps=T_new) if plan.settings else plan.settings
    record = {"from_steps": plan.steps, "from_nfe": plan.nfe, "nfe_share": nfe_share, "nfe": nfe, "rule": RULE}
    out = plan.copy(steps=T_new, base_sigmas=sig, cached_steps=cached, streams=streams, adjusted_sigmas=None,
                    rectify=rect, predictor=dict(plan.predictor, c=c), settings=settings, search_errors={},
                    placement=None, transferred=record)
    out.tensors, out.folder = tensors or None, plan.folder
    if nfe is not None and out.nfe != nfe:
        raise PlanMismatch(f"nfe {nfe} cannot be met at steps {T_new} (the transferred plan has {out.nfe} computed "
                           f"calls; between {2 * len(plan.branches)} and {sum(out.calls(b) for b in out.branches)})")
    return out


def expert_split(pipe, scheduler) -> int | None:
    """The first step of a two-expert pipeline's later expert (Wan2.2: the first timestep below
    `boundary_ratio` x num_train_timesteps), None for a pipeline without experts."""
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if ratio is None or train is None:
        return None
    return sum(float(t) >= ratio * train for t in scheduler.timesteps)
