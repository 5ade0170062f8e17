"""fit: timestep adjustment and error rectification for a plan, validated on held-out prompts -> a fit run."""

from __future__ import annotations

from pathlib import Path

from ..errors import require_same
from ..plan import Plan, check_plan, load_plan
from ..runs.artifacts import load_tensors, save_tensors
from ..runs.job import Job
from .profile import load_profile


def run_fit(job: Job, plan_path: str, adjust: str | None = None, rectify: str | None = None,
            gain: str | None = None, optimize_placement: bool | None = None,
            placement_trials: int | None = None) -> tuple[Path, Plan]:
    """Fit every allowed candidate on the fit part, keep what lowers held-out MSE; returns (run dir, plan)."""
    from ..calibration.fit import FitSettings, fit_plan

    plan = load_plan(plan_path)
    check_plan(plan, job.run_settings())
    profile, pdir = load_profile(plan.calibration["profile_run"], job)
    samples = job.calibration()
    require_same(plan.where, "calibration set digest", plan.calibration["digest"], samples.digest(),
                 "re-run `ertacache search` on this recipe's calibration prompts and seeds")
    settings = FitSettings.of(job.recipe.fit, adjust=adjust, rectify=rectify, gain=gain,
                              optimize_placement=optimize_placement, placement_trials=placement_trials)
    ref = load_tensors(Path(pdir) / "baseline_latents.safetensors")["latents"]
    final, latents = fit_plan(job.sampler, plan, profile, samples, ref, settings, job.recipe.calibration.holdout,
                              job.quiet)
    final.made_by = "ertacache fit"
    with job.rundir("fit") as run:
        job.start(run, "fit", samples.seeds)
        final.save(run.subdir("plan"))
        run.write_json("fit.json", {"source_plan": str(plan.folder), **final.fit})
        if latents is not None:
            save_tensors(run.file("fit_latents.safetensors"), {"latents": latents})
    return job.finished(run), final
