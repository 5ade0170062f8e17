"""search: one plan per lambda (or one for a target) and a summary table -> a search run directory."""

from __future__ import annotations

from pathlib import Path

from ..plan import plan_summary
from ..runs.job import Job
from .profile import find_or_make_profile


def run_search(job: Job, lambdas: list[float], profile_dir: str | None = None,
               cached_steps: int | None = None, target_speedup: float | None = None, nfe: int | None = None):
    """Write one plan per lambda (or one plan for a target) and a summary table; returns (run dir, DataFrame).

    `nfe` (transformer calls per sample) is a cached-steps target counted over the profile's branches.
    """
    import pandas as pd

    from ..calibration.search import Target, cached_for, check_lambda, search_plan, search_target
    from ..runs.tables import save_table

    for lam in lambdas:
        check_lambda(lam)
    profile, pdir = find_or_make_profile(job, profile_dir)
    if nfe is not None:
        cached_steps = cached_for(list(profile["branches"]), job.recipe.sampling.steps, nfe, job.recipe.name,
                                  profile.get("streams"))
    if job.recipe.search.auto:
        return run_auto(job, lambdas, (profile, pdir), cached_steps, target_speedup)
    samples, sampler, ident, cc = job.calibration(), job.sampler, job.identity(pdir), job.recipe.cache
    with job.rundir("search") as run:
        job.start(run, "search", samples.seeds)
        if cached_steps is not None or target_speedup is not None:
            target = Target(cached_steps, target_speedup)
            plans = [search_target(sampler, samples, profile, target, cc, ident, quiet=job.quiet)]
        else:
            plans = [search_plan(sampler, samples, profile, lam, cc, ident, job.quiet) for lam in lambdas]
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


def auto_target(job: Job, profile: dict, samples, lambdas: list[float], cached_steps: int | None,
                target_speedup: float | None, ident: dict) -> int:
    """Cached calls auto aims at: --cached-steps, or what --target-speedup needs, or what the recipe's
    threshold policy caches at the (first) lambda."""
    import math

    from ..calibration.search import search_plan

    total = len(profile["branches"]) * job.recipe.sampling.steps
    if cached_steps is not None:
        return int(cached_steps)
    if target_speedup is not None:
        return int(math.ceil(total * (1.0 - 1.0 / float(target_speedup)) - 1e-9))
    return search_plan(job.sampler, samples, profile, lambdas[0], job.recipe.cache, ident, job.quiet).n_cached


def run_auto(job: Job, lambdas: list[float], found: tuple, cached_steps: int | None, target_speedup: float | None):
    """`search --method auto`: the configuration search at one target -> plans/auto (plan.json, auto.csv)."""
    import pandas as pd

    from ..calibration.auto import AutoSettings, auto_search, save_auto
    from ..calibration.fit import FitSettings
    from ..runs.tables import save_table

    profile, pdir = found
    pdir = Path(pdir)
    samples, ident = job.calibration(), job.identity(pdir)
    target = auto_target(job, profile, samples, lambdas, cached_steps, target_speedup, ident)
    settings = AutoSettings(trials=job.recipe.search.auto_trials, holdout=job.recipe.calibration.holdout,
                            fit=FitSettings.of(job.recipe.fit, optimize_placement=False))
    plan, rows = auto_search(job.sampler, samples, target, ident, settings, job.quiet)
    with job.rundir("search") as run:
        job.start(run, "search", samples.seeds)
        folder = run.subdir("plans/auto")
        save_auto(plan, rows, folder)
        df = pd.DataFrame([{**plan_summary(plan), "plan": str(folder.relative_to(run.path))}])
        save_table(df, run.path, "summary")
        run.write_json("search.json", {"profile_run": str(pdir), "method": "auto", "auto": plan.auto,
                                       "target": {"cached_steps": target, "speedup": target_speedup}})
    if not job.quiet:
        print(plan.auto["summary"])
    return job.finished(run), df
