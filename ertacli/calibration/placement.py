"""Placement at fixed NFE (docs/method.md "Beyond the paper"): greedy ±1 moves of the computed steps."""

from __future__ import annotations

from ..plan import Plan
from ..progress import task
from .samples import Samples

SWEEPS = 3


def placement_error(sampler, plan: Plan, samples: Samples, ref) -> float:
    """L1 error of one cached run of the calibration batch against the profile's uncached final latents."""
    from ..dist import all_sum
    from ..engine.controllers import l1
    from .passes import apply_controller, calibration_pass

    idx, mine = samples.mine()
    out = calibration_pass(sampler, apply_controller(plan, sampler.backbone.channel_dim), mine, "placement trial")
    return all_sum(l1(out.latents.double() - ref[idx].double()))


def move(T: int, cached: list[int], j: int, n: int, lo: int = 1, hi: int | None = None) -> list[int] | None:
    """The cached list after moving computed step j (lo <= j <= hi; default 1..T-2) to its cached neighbour
    n = j±1, else None."""
    S = set(cached)
    hi = T - 2 if hi is None else hi
    if not lo <= j <= hi or j in S or n not in S:
        return None
    return sorted((S - {n}) | {j})


def movable(plan: Plan, branch: str, last_cacheable: bool) -> tuple[int, int]:
    """(lo, hi): the steps a move may cache. The paper's policy keeps 1..T-2; with `last_cacheable` (SPEC
    "Residual cache": T-1 is a plan's choice) every step after the stream's first, up to its last."""
    if not last_cacheable:
        return 1, plan.steps - 2
    first, last = (plan.streams or {}).get(branch, (0, plan.steps - 1))
    return int(first) + 1, int(last)


def optimize_placement(sampler, plan: Plan, samples: Samples, ref, max_trials: int = 0,
                       sweeps: int = SWEEPS, quiet: bool = True, last_cacheable: bool = False) -> Plan:
    """First-improvement ±1 moves per branch for a few sweeps; never returns a plan worse than its start.
    `last_cacheable`: moves may cache the final step (auto's refinement); off, T-1 stays computed."""
    best = plan
    before = score = placement_error(sampler, plan, samples, ref)
    trials = 0
    budget = max_trials if max_trials > 0 else None
    with task("placement trials", budget, quiet) as advance:
        for _ in range(sweeps):
            improved = False
            for b in best.branches:
                lo, hi = movable(best, b, last_cacheable)
                for j in range(lo, hi + 1):
                    for n in (j - 1, j + 1):
                        cand = move(best.steps, best.cached_steps.get(b, []), j, n, lo, hi)
                        if cand is None or (budget is not None and trials >= budget):
                            continue
                        trial = best.copy(cached_steps={**best.cached_steps, b: cand})
                        err = placement_error(sampler, trial, samples, ref)
                        trials += 1
                        advance()
                        if err < score:
                            best, score, improved = trial, err, True
                            break
            if not improved:
                break
    return best.copy(placement={"before": before, "after": score, "trials": trials})
