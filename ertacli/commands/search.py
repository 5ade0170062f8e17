"""search: one plan per lambda (or one for a target) and a summary table -> a search run directory."""

from __future__ import annotations

from ..runs.job import Job
from ..runs.recorder import record_search
from .profile import find_or_make_profile


def targets_of(lambdas: list[float], cached_steps: int | None, target_speedup: float | None,
               nfe: int | None) -> list:
    """The command line's targets: one --cached-steps / --target-speedup / --nfe, else one per lambda."""
    from ..calibration.run import Target
    from ..calibration.search import check_lambda
    from ..errors import UserError

    given = [x for x in (cached_steps, target_speedup, nfe) if x is not None]
    if len(given) > 1:
        raise UserError("give one target: --cached-steps, --target-speedup or --nfe")
    if given:
        return [Target(cached=cached_steps, speedup=target_speedup, nfe=nfe)]
    return [Target(lam=check_lambda(lam)) for lam in lambdas]


def search(job: Job, targets: list, profile=None):
    """The library's search at each target on the job's calibration set (auto: its configuration search at the
    first), recorded as one search run; returns (run path, summary table, the Calibrations)."""
    from ..calibration.run import MethodConfig, calibrate_plan, cached_count

    profile = profile if profile is not None else find_or_make_profile(job, None)
    method, samples = MethodConfig.of_recipe(job.recipe), job.calibration()
    ident = job.identity(profile.run)
    targets = targets[:1] if method.auto else targets
    results = [calibrate_plan(job.sampler, samples, t, method, ident, job.recipe.calibration.holdout, profile,
                              fit=False, quiet=job.quiet) for t in targets]
    first = targets[0]
    cached = results[0].target_cached if method.auto else cached_count(first, profile.branches, profile.steps,
                                                                       job.recipe.name, profile.streams)
    path, df = record_search(job.recorder, [r.plan for r in results], profile.run,
                             {"cached_steps": cached, "speedup": first.speedup}, samples.seeds,
                             results[0].auto_rows if method.auto else None)
    if method.auto and not job.quiet:
        print(results[0].plan.auto["summary"])
    return path, df, results


def run_search(job: Job, lambdas: list[float], profile_dir: str | None = None,
               cached_steps: int | None = None, target_speedup: float | None = None, nfe: int | None = None):
    """`ertacache search`: one plan per lambda (or one plan for a target) and a summary table; returns (run dir,
    DataFrame). `nfe` (transformer calls per sample) is a cached-steps target counted over the profile's branches."""
    targets = targets_of(lambdas, cached_steps, target_speedup, nfe)
    path, df, _ = search(job, targets, find_or_make_profile(job, profile_dir))
    return path, df
