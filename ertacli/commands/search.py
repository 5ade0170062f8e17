"""search: threshold policy (paper Algorithm 2) -> one plan per lambda, or the smallest lambda meeting a target."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..plan import Plan, model_id, plan_summary
from .common import Job, calibration_pass
from .profile import find_or_make_profile


def recipe_predictor(job: Job, base_sigmas: list[float]):
    """The recipe's predictor (`cache.predictor`, `cache.order`, `cache.abscissa`; c = 1 when extrapolating)."""
    from ..engine.predict import Predictor

    cc = job.recipe.cache
    return Predictor(cc.predictor, cc.order, cc.abscissa, 1.0 if cc.predictor == "extrapolate" else 0.0,
                     list(base_sigmas))


def search_plan(job: Job, profile: dict, profile_dir: Path, lam: float) -> Plan:
    """One lockstep calibration pass with the threshold decision at lambda."""
    from ..engine import SearchController

    samples = job.calibration()
    T = job.recipe.sampling.steps
    gt = {b: rows["R"] for b, rows in profile["stats"].items()}
    pred = recipe_predictor(job, profile["base_sigmas"])
    ctl = SearchController(T, lam, gt, job.recipe.cache.residual, pred)
    calibration_pass(job, ctl, samples.mine()[1], f"search lambda={lam:g}")
    branches = list(profile["branches"])
    return Plan(
        recipe=job.recipe.name, recipe_key=job.key, model_id=model_id(job.recipe), steps=T,
        scheduler=profile["scheduler"], residual=job.recipe.cache.residual, base_sigmas=profile["base_sigmas"],
        branches=branches, cached_steps={b: sorted(ctl.cached_steps.get(b, [])) for b in branches},
        sample_shape=profile["sample_shape"], lam=lam, predictor=pred.to_json(),
        calibration={**samples.to_json(), "profile_run": str(profile_dir)},
        search_errors={b: {str(k): e for k, e in sorted(ctl.errors[b].items())} for b in branches},
    )


def _meets(plan: Plan, cached_steps: int | None, speedup: float | None) -> bool:
    if cached_steps is not None:
        return plan.n_cached >= cached_steps
    return plan.predicted_speedup >= speedup


def search_target(job: Job, profile: dict, profile_dir: Path, cached_steps: int | None,
                  speedup: float | None, iters: int = 12) -> Plan:
    """Smallest lambda (bisection) whose plan caches >= N steps or predicts >= X speedup."""
    lo, hi = 0.0, 0.5
    best = search_plan(job, profile, profile_dir, hi)
    while not _meets(best, cached_steps, speedup):
        if hi >= 64:
            raise UserError(f"no lambda up to {hi} reaches the target (best: {best.n_cached} cached steps, "
                            f"{best.predicted_speedup:.2f}x); lower --cached-steps / --target-speedup")
        lo, hi = hi, hi * 2
        best = search_plan(job, profile, profile_dir, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        plan = search_plan(job, profile, profile_dir, mid)
        if _meets(plan, cached_steps, speedup):
            hi, best = mid, plan
        else:
            lo = mid
    best.method = "search-target"
    return best


def run_search(job: Job, lambdas: list[float], profile_dir: str | None = None,
               cached_steps: int | None = None, target_speedup: float | None = None):
    """Write one plan per lambda (or one plan for a target) and a summary table; returns (run dir, DataFrame)."""
    import pandas as pd

    from ..tables import save_table

    for lam in lambdas:
        if lam < 0:
            raise UserError(f"--lambda must be >= 0, got {lam}")
    profile, pdir = find_or_make_profile(job, profile_dir)
    samples = job.calibration()
    with job.rundir("search") as run:
        job.start(run, "search", samples.seeds)
        if cached_steps is not None or target_speedup is not None:
            plans = [search_target(job, profile, pdir, cached_steps, target_speedup)]
        else:
            plans = [search_plan(job, profile, pdir, lam) for lam in lambdas]
        rows = []
        for plan in plans:
            folder = run.subdir(f"plans/lambda-{plan.lam:g}")
            plan.save(folder)
            rows.append({**plan_summary(plan), "plan": str(folder.relative_to(run.path))})
        df = pd.DataFrame(rows)
        save_table(df, run.path, "summary")
        run.write_json("search.json", {"profile_run": str(pdir), "lambdas": [p.lam for p in plans],
                                       "target": {"cached_steps": cached_steps, "speedup": target_speedup}})
    return job.finished(run), df
