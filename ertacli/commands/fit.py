"""fit: timestep adjustment and error rectification for a plan, validated on held-out prompts -> a fit run."""

from __future__ import annotations

from pathlib import Path

from ..errors import require_same
from ..plan import Plan, check_plan, load_plan
from ..runs.job import Job
from ..runs.recorder import record_fit
from .profile import load_profile


def fit(job: Job, plan: Plan, profile=None, **modes) -> tuple[Path, Plan]:
    """The library's fit of an in-memory plan (searched on this job's calibration set) against its profile
    (default: the profile run the plan names), recorded as a fit run; `modes`: adjust, rectify, gain,
    optimize_placement, placement_trials over the recipe's `fit:` section. Returns (run dir, fitted plan)."""
    from ..calibration.fit import FitSettings
    from ..calibration.run import fit_stage

    samples = job.calibration()
    require_same(plan.where, "calibration set digest", plan.calibration["digest"], samples.digest(),
                 "re-run `ertacache search` on this recipe's calibration prompts and seeds")
    profile = profile if profile is not None else load_profile(plan.calibration["profile_run"], job)
    settings = FitSettings.of(job.recipe.fit, **modes)
    final, latents = fit_stage(job.sampler, plan, profile, samples, settings, job.recipe.calibration.holdout,
                               job.quiet)
    source = plan.folder if plan.folder is not None else plan.where
    return record_fit(job.recorder, final, source, latents, samples.seeds), final


def run_fit(job: Job, plan_path: str, adjust: str | None = None, rectify: str | None = None,
            gain: str | None = None, optimize_placement: bool | None = None,
            placement_trials: int | None = None) -> tuple[Path, Plan]:
    """`ertacache fit --plan DIR`: fit every allowed candidate on the fit part, keep what lowers held-out MSE."""
    plan = load_plan(plan_path)
    check_plan(plan, job.run_settings())
    return fit(job, plan, adjust=adjust, rectify=rectify, gain=gain, optimize_placement=optimize_placement,
               placement_trials=placement_trials)
