"""Placement optimisation at fixed NFE (SPEC "Beyond the paper: ... placement"): greedy ±1 moves of computed steps."""

from __future__ import annotations

from dataclasses import asdict

from ..plan import Plan
from .common import Job, Samples, progress_bar

SWEEPS = 3


def placement_error(job: Job, plan: Plan, samples: Samples, ref) -> float:
    """L1 error of one cached run of the calibration batch against the profile's uncached final latents."""
    from ..dist import all_sum
    from ..engine import Session
    from ..engine.controllers import l1
    from .fit import apply_controller

    idx, mine = samples.mine()
    with Session(job.loaded, apply_controller(job, plan), job.recipe.calibration.micro_batch) as session:
        out = session.run_batch(job.recipe, mine.prompts, mine.seeds)
    return all_sum(l1(out.latents.double() - ref[idx].double()))


def move(T: int, cached: list[int], j: int, n: int) -> list[int] | None:
    """The cached list after moving computed step j (0 < j < T-1) to its cached neighbour n = j±1, else None."""
    S = set(cached)
    if not 0 < j < T - 1 or j in S or n not in S:
        return None
    return sorted((S - {n}) | {j})


def _with_cached(plan: Plan, branch: str, cached: list[int]) -> Plan:
    p = Plan(**asdict(plan))
    p.cached_steps = {**p.cached_steps, branch: cached}
    return p


def optimize_placement(job: Job, plan: Plan, samples: Samples, ref, max_trials: int = 0,
                       sweeps: int = SWEEPS) -> Plan:
    """First-improvement ±1 moves per branch for a few sweeps; never returns a plan worse than its start."""
    best = plan
    before = score = placement_error(job, plan, samples, ref)
    trials = 0
    budget = max_trials if max_trials > 0 else None
    with progress_bar(job.quiet) as bar:
        task = bar.add_task("placement trials", total=budget)
        for _ in range(sweeps):
            improved = False
            for b in best.branches:
                for j in range(1, best.steps - 1):
                    for n in (j - 1, j + 1):
                        cand = move(best.steps, best.cached_steps.get(b, []), j, n)
                        if cand is None or (budget is not None and trials >= budget):
                            continue
                        trial = _with_cached(best, b, cand)
                        err = placement_error(job, trial, samples, ref)
                        trials += 1
                        bar.advance(task)
                        if err < score:
                            best, score, improved = trial, err, True
                            break
            if not improved:
                break
    out = Plan(**asdict(best))
    out.placement = {"before": before, "after": score, "trials": trials}
    return out
