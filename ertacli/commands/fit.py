"""fit: timestep adjustment and error rectification for a plan, validated on held-out prompts (SPEC "fit")."""

from __future__ import annotations

import math
from dataclasses import asdict
from itertools import product
from pathlib import Path

from ..errors import UserError
from ..plan import Plan, check_plan, coeffs_from, load_plan
from .common import Job, Samples, calibration_pass, gather_rows, load_tensors, save_tensors
from .profile import load_profile

MODES = ("auto", "on", "off")


def split_holdout(samples: Samples, prompts: list[str], seeds: list[int], share: float) -> tuple[list[int], list[int]]:
    """Sample indices of the fit part and the held-out part (the last ceil(share * prompts) prompts, >= 1)."""
    n_hold = max(1, math.ceil(share * len(prompts)))
    held = set(prompts[len(prompts) - n_hold:])
    fit_idx = [i for i, p in enumerate(samples.prompts) if p not in held]
    hold_idx = [i for i, p in enumerate(samples.prompts) if p in held]
    return fit_idx, hold_idx


def fit_pass(job: Job, plan: Plan, profile: dict, samples: Samples, adjust: bool, rectify: bool,
             gain: bool = False):
    """One lockstep fit pass; returns (controller, final latents)."""
    from ..engine import FitController
    from ..engine.predict import Predictor

    fc = job.recipe.fit
    ctl = FitController(plan.steps, plan.cached_sets(), {b: r["dv"] for b, r in profile["stats"].items()},
                        plan.base_sigmas, adjust, rectify, fc.rectify_form, fc.granularity,
                        job.loaded.backbone.channel_dim, plan.residual,
                        Predictor.from_plan(plan.predictor, plan.base_sigmas), gain)
    idx, mine = samples.mine()
    out = calibration_pass(job, ctl, mine, f"fit adjust={adjust} rectify={rectify} gain={gain}")
    return ctl, gather_rows(idx, out.latents)


def apply_controller(job: Job, plan: Plan, coeffs=None, sigmas=None):
    """The generate-time controller for a plan (optionally with candidate coefficients / sigmas)."""
    from ..engine import ApplyController, LiveSchedule
    from ..engine.predict import Predictor

    schedule = LiveSchedule(plan.base_sigmas, fixed=sigmas) if sigmas is not None else None
    rect = plan.rectify or {}
    return ApplyController(plan.steps, plan.cached_sets(), coeffs, rect.get("form", "linear"),
                           rect.get("granularity", "scalar"), job.loaded.backbone.channel_dim, schedule,
                           plan.residual, Predictor.from_plan(plan.predictor, plan.base_sigmas))


def _holdout_mse(job: Job, plan: Plan, samples: Samples, ref, coeffs, sigmas) -> float:
    from ..dist import all_sum

    idx, mine = samples.mine()
    out = calibration_pass(job, apply_controller(job, plan, coeffs, sigmas), mine, "validate on held-out")
    sq = all_sum(float(((out.latents.double() - ref[idx].double()) ** 2).sum()))
    return sq / all_sum(float(out.latents.numel()))


def _candidates(adjust: str, rectify: str, gain: str = "off") -> list[tuple[bool, bool, bool]]:
    allowed = lambda mode: (True, False) if mode == "auto" else ((True,) if mode == "on" else (False,))
    return [c for c in product(allowed(adjust), allowed(rectify), allowed(gain))]


def _with_fit(plan: Plan, ctl, adjust: bool, rectify: bool, form: str, granularity: str,
              gain: bool = False) -> tuple[Plan, dict]:
    """A copy of `plan` carrying one candidate's sigmas, coefficients and gains; returns (plan, tensors to save)."""
    p = Plan(**asdict(plan))
    if gain:
        p.predictor = {**p.predictor, "c": {b: {str(k): c for k, c in sorted(g.items())} for b, g in ctl.gains.items()}}
    p.adjusted_sigmas = list(ctl.schedule.sigmas) if adjust else None
    p.rectify = {"enabled": rectify, "form": form, "granularity": granularity, "scalar": {}}
    tensors = {}
    for b, per_step in (ctl.coeffs.items() if rectify else ()):
        for k, (a, c) in per_step.items():
            if granularity == "scalar":
                p.rectify["scalar"].setdefault(b, {})[str(k)] = [float(a), float(c)]
            else:
                tensors[f"{b}.{k}.a"], tensors[f"{b}.{k}.b"] = a.contiguous(), c.contiguous()
    return p, tensors


def _modes(job: Job, plan: Plan, adjust, rectify, gain) -> tuple[str, str, str]:
    """The requested (adjust, rectify, gain) modes, checked; adjust and gain fall back to off where not valid."""
    from ..engine import check_adjustable

    fc = job.recipe.fit
    adjust, rectify, gain = adjust or fc.adjust, rectify or fc.rectify, gain or fc.gain
    for name, mode in (("--adjust", adjust), ("--rectify", rectify), ("--gain", gain)):
        if mode not in MODES:
            raise UserError(f"{name} must be one of {', '.join(MODES)}, got {mode!r}")
    if gain == "on" and plan.predictor.get("kind", "reuse") != "extrapolate":
        raise UserError("--gain on needs a plan searched with --predictor extrapolate")
    if plan.predictor.get("kind", "reuse") != "extrapolate":
        gain = "off"
    if adjust != "off":
        try:
            check_adjustable(job.loaded.pipe.scheduler)
        except ValueError as exc:
            if adjust == "on":
                raise UserError(str(exc))
            adjust = "off"
    return adjust, rectify, gain


def _evaluate(job, plan, profile, fit_set, hold_set, ref, cand_modes, validate: bool) -> list[dict]:
    """Fit every candidate on the fit part and measure its held-out MSE."""
    fc = job.recipe.fit
    results = []
    for adj, rect, gn in cand_modes:
        latents = None
        if adj or rect or gn:
            ctl, latents = fit_pass(job, plan, profile, fit_set, adj, rect, gn)
            cand, tensors = _with_fit(plan, ctl, adj, rect, fc.rectify_form, fc.granularity, gn)
            phis = ctl.phis()
        else:
            cand, tensors, phis = plan, {}, {}
        mse = None
        if validate:
            mse = _holdout_mse(job, cand, hold_set, ref, coeffs_from(cand, tensors), cand.adjusted_sigmas)
        results.append({"adjust": adj, "rectify": rect, "gain": gn, "holdout_mse": mse, "plan": cand,
                        "tensors": tensors, "phis": phis, "latents": latents})
    return results


def run_fit(job: Job, plan_path: str, adjust: str | None = None, rectify: str | None = None,
            gain: str | None = None, optimize_placement: bool | None = None, placement_trials: int | None = None):
    """Fit every allowed candidate on the fit part, keep what lowers held-out MSE; returns (run dir, plan)."""
    from ..engine.schedule import phi_summary

    plan, folder = load_plan(plan_path)
    check_plan(plan, job.recipe, folder)
    adjust, rectify, gain = _modes(job, plan, adjust, rectify, gain)
    profile, pdir = load_profile(plan.calibration["profile_run"], job)
    samples = job.calibration()
    if samples.digest() != plan.calibration["digest"]:
        raise UserError(f"plan {folder} was searched on another calibration set: re-run `ertacache search`")
    prompts = job.recipe.read_prompts("calibration")
    validate = len(prompts) >= 2
    if not validate and "auto" in (adjust, rectify, gain):
        raise UserError("validated fit needs >= 2 calibration prompts; add prompts or pass --adjust/--rectify/--gain "
                        "on|off")
    all_ref = load_tensors(Path(pdir) / "baseline_latents.safetensors")["latents"]
    fc = job.recipe.fit
    if optimize_placement if optimize_placement is not None else fc.optimize_placement:
        from .placement import optimize_placement as _place

        plan = _place(job, plan, samples, all_ref, placement_trials or fc.placement_trials or 0)
    fit_idx, hold_idx = (split_holdout(samples, prompts, samples.seeds, job.recipe.calibration.holdout)
                         if validate else (list(range(len(samples))), []))
    fit_set, hold_set = samples.subset(fit_idx), samples.subset(hold_idx)
    ref = all_ref[hold_idx] if validate else None
    results = _evaluate(job, plan, profile, fit_set, hold_set, ref, _candidates(adjust, rectify, gain), validate)
    best = _choose(results, validate)
    plain = next((r["holdout_mse"] for r in results if not (r["adjust"] or r["rectify"] or r["gain"])), None)
    final: Plan = best["plan"]
    final.method = "fit"
    final.fit = {
        "requested": {"adjust": adjust, "rectify": rectify, "gain": gain},
        "decision": {"adjust": best["adjust"], "rectify": best["rectify"], "gain": best["gain"]},
        "candidates": [{"adjust": r["adjust"], "rectify": r["rectify"], "gain": r["gain"],
                        "holdout_mse": r["holdout_mse"],
                        "gain_vs_plain": (plain - r["holdout_mse"]) if plain is not None and r["holdout_mse"]
                        is not None else None} for r in results],
        "phi": {str(k): v for k, v in best["phis"].items()}, "phi_summary": phi_summary(best["phis"]),
        "fit_samples": fit_set.to_json(), "holdout_samples": hold_set.to_json(), "validated": validate,
    }
    with job.rundir("fit") as run:
        job.start(run, "fit", samples.seeds)
        final.save(run.subdir("plan"), best["tensors"])
        run.write_json("fit.json", {"source_plan": str(folder), **final.fit})
        if best["latents"] is not None:
            save_tensors(run.file("fit_latents.safetensors"), {"latents": best["latents"]})
    return job.finished(run), final


def _choose(results: list[dict], validate: bool) -> dict:
    """Lowest held-out MSE wins; a correction is kept only if it beats the plain policy (ties keep fewer parts)."""
    if not validate:
        return results[0]
    plain = next((r for r in results if not (r["adjust"] or r["rectify"] or r["gain"])), None)
    ranked = sorted(results, key=lambda r: (r["holdout_mse"], r["adjust"] + r["rectify"] + r["gain"]))
    best = ranked[0]
    if plain is not None and best["holdout_mse"] >= plain["holdout_mse"]:
        return plain
    return best
