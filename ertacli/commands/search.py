"""search: one plan per lambda (or one for a target) and a summary table -> a search run directory."""

from __future__ import annotations

from ..plan import plan_summary
from ..runs.job import Job
from .profile import find_or_make_profile


def run_search(job: Job, lambdas: list[float], profile_dir: str | None = None,
               cached_steps: int | None = None, target_speedup: float | None = None):
    """Write one plan per lambda (or one plan for a target) and a summary table; returns (run dir, DataFrame)."""
    import pandas as pd

    from ..calibration.search import Target, check_lambda, search_plan, search_target
    from ..runs.tables import save_table

    for lam in lambdas:
        check_lambda(lam)
    profile, pdir = find_or_make_profile(job, profile_dir)
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
