"""fit: timestep adjustment, error rectification and the predictor gain, validated on held-out prompts.

Each allowed candidate (adjust x rectify x gain) is fitted on the fit part of the calibration set and scored by
the MSE of its final latents against the uncached ones on the held-out part; a correction is kept only when it
lowers that MSE (docs/method.md "fit").
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from ..choices import TOGGLES as MODES
from ..errors import UserError
from ..plan import Plan, Rectification
from .passes import apply_controller, calibration_pass, gather_rows
from .profile import Profile
from .samples import Samples, split_holdout


@dataclass(frozen=True)
class FitSettings:
    """The requested modes and forms of a fit (a recipe's `fit:` section, or keyword arguments)."""

    adjust: str = "auto"
    rectify: str = "auto"
    gain: str = "auto"
    rectify_form: str = "linear"
    granularity: str = "scalar"
    optimize_placement: bool = False
    placement_trials: int = 0

    @classmethod
    def of(cls, fit_cfg, **overrides) -> "FitSettings":
        """From a recipe's FitCfg, with the non-None overrides on top."""
        data = {k: getattr(fit_cfg, k) for k in cls.__dataclass_fields__}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def resolve_modes(settings: FitSettings, plan: Plan, scheduler) -> tuple[str, str, str]:
    """The (adjust, rectify, gain) modes, checked; adjust and gain fall back to off where not valid."""
    from ..engine import check_adjustable

    adjust, rectify, gain = settings.adjust, settings.rectify, settings.gain
    for name, mode in (("--adjust", adjust), ("--rectify", rectify), ("--gain", gain)):
        if mode not in MODES:
            raise UserError(f"{name} must be one of {', '.join(MODES)}, got {mode!r}")
    extrapolates = plan.prediction.active
    if gain == "on" and not extrapolates:
        raise UserError("--gain on needs a plan searched with --predictor extrapolate")
    gain = gain if extrapolates else "off"
    if adjust != "off":
        try:
            check_adjustable(scheduler)
        except ValueError as exc:
            if adjust == "on":
                raise UserError(str(exc))
            adjust = "off"
    return adjust, rectify, gain


def fit_pass(sampler, plan: Plan, profile: Profile, samples: Samples, adjust: bool, rectify: bool, gain: bool,
             settings: FitSettings, quiet: bool = True):
    """One lockstep fit pass; returns (controller, final latents)."""
    from ..engine import FitController

    ctl = FitController(plan.steps, plan.cached_sets(), {b: r["dv"] for b, r in profile.stats.items()},
                        plan.base_sigmas, adjust, rectify, settings.rectify_form, settings.granularity,
                        sampler.backbone.channel_dim, plan.residual, plan.prediction, gain)
    idx, mine = samples.mine()
    out = calibration_pass(sampler, ctl, mine, f"fit adjust={adjust} rectify={rectify} gain={gain}", quiet)
    return ctl, gather_rows(idx, out.latents)


def latent_mse(sampler, plan: Plan, samples: Samples, ref, quiet: bool = True) -> float:
    """Mean squared error of a plan's final latents on `samples` against the reference latents `ref`."""
    from ..dist import all_sum

    idx, mine = samples.mine()
    ctl = apply_controller(plan, sampler.backbone.channel_dim, plan.coeffs(), plan.adjusted_sigmas)
    out = calibration_pass(sampler, ctl, mine, "validate on held-out", quiet)
    sq = all_sum(float(((out.latents.double() - ref[idx].double()) ** 2).sum()))
    return sq / all_sum(float(out.latents.numel()))


def candidates(adjust: str, rectify: str, gain: str = "off") -> list[tuple[bool, bool, bool]]:
    """Every (adjust, rectify, gain) the modes allow: auto tries both, on / off one."""
    allowed = lambda mode: (True, False) if mode == "auto" else ((True,) if mode == "on" else (False,))
    return list(product(allowed(adjust), allowed(rectify), allowed(gain)))


def with_fit(plan: Plan, ctl, adjust: bool, rectify: bool, form: str, granularity: str, gain: bool = False) -> Plan:
    """A copy of `plan` carrying one candidate's sigmas, coefficients and gains (non-scalar ones in `tensors`)."""
    p = plan.copy()
    if gain:
        p.predictor = {**p.predictor, "c": {b: {str(k): c for k, c in sorted(g.items())} for b, g in ctl.gains.items()}}
    p.adjusted_sigmas = list(ctl.schedule.sigmas) if adjust else None
    p.rectify = Rectification(rectify, form, granularity, {}).to_json()
    tensors = {}
    for b, per_step in (ctl.coeffs.items() if rectify else ()):
        for k, (a, c) in per_step.items():
            if granularity == "scalar":
                p.rectify["scalar"].setdefault(b, {})[str(k)] = [float(a), float(c)]
            else:
                tensors[f"{b}.{k}.a"], tensors[f"{b}.{k}.b"] = a.contiguous(), c.contiguous()
    p.tensors = tensors or None
    return p


def score_candidates(sampler, plan: Plan, profile: Profile, fit_set: Samples, hold_set: Samples, ref, modes,
                     settings: FitSettings, validate: bool, quiet: bool = True) -> list[dict]:
    """Fit every candidate on the fit part and measure its held-out MSE."""
    results = []
    for adj, rect, gn in modes:
        latents, cand, phis = None, plan, {}
        if adj or rect or gn:
            ctl, latents = fit_pass(sampler, plan, profile, fit_set, adj, rect, gn, settings, quiet)
            cand = with_fit(plan, ctl, adj, rect, settings.rectify_form, settings.granularity, gn)
            phis = ctl.phis()
        mse = latent_mse(sampler, cand, hold_set, ref, quiet) if validate else None
        results.append({"adjust": adj, "rectify": rect, "gain": gn, "holdout_mse": mse, "plan": cand,
                        "phis": phis, "latents": latents})
    return results


def choose(results: list[dict], validate: bool) -> dict:
    """Lowest held-out MSE wins; a correction is kept only if it beats the plain policy (ties keep fewer parts)."""
    if not validate:
        return results[0]
    plain = next((r for r in results if not (r["adjust"] or r["rectify"] or r["gain"])), None)
    ranked = sorted(results, key=lambda r: (r["holdout_mse"], r["adjust"] + r["rectify"] + r["gain"]))
    best = ranked[0]
    if plain is not None and best["holdout_mse"] >= plain["holdout_mse"]:
        return plain
    return best


def fit_plan(sampler, plan: Plan, profile: Profile, samples: Samples, ref, settings: FitSettings, holdout: float,
             quiet: bool = True) -> tuple[Plan, object]:
    """Fit every allowed candidate, keep what lowers held-out MSE; returns (fitted plan, its fit-pass latents).

    `samples` is the calibration set the plan was searched on and `ref` its uncached final latents (the profile's).
    """
    from ..engine.schedule import phi_summary

    adjust, rectify, gain = resolve_modes(settings, plan, sampler.pipe.scheduler)
    prompts = samples.unique_prompts()
    validate = len(prompts) >= 2
    if not validate and "auto" in (adjust, rectify, gain):
        raise UserError("validated fit needs >= 2 calibration prompts; add prompts or pass --adjust/--rectify/--gain "
                        "on|off")
    fit_idx, hold_idx = split_holdout(samples, prompts, holdout) if validate else (list(range(len(samples))), [])
    fit_set, hold_set = samples.subset(fit_idx), samples.subset(hold_idx)
    if settings.optimize_placement:  # on the fit part only: the held-out part judges what was fitted
        from .placement import optimize_placement

        plan = optimize_placement(sampler, plan, fit_set, ref[fit_idx], settings.placement_trials or 0, quiet=quiet)
    fit_profile = profile.fit_part(samples, holdout if validate else None)[1]  # phi's denominators: fit part only
    results = score_candidates(sampler, plan, fit_profile, fit_set, hold_set, ref[hold_idx] if validate else None,
                               candidates(adjust, rectify, gain), settings, validate, quiet)
    best = choose(results, validate)
    plain = next((r["holdout_mse"] for r in results if not (r["adjust"] or r["rectify"] or r["gain"])), None)
    final: Plan = best["plan"].copy()
    final.method = "fit"
    final.fit = {
        "requested": {"adjust": adjust, "rectify": rectify, "gain": gain},
        "decision": {"adjust": best["adjust"], "rectify": best["rectify"], "gain": best["gain"]},
        "candidates": [{"adjust": r["adjust"], "rectify": r["rectify"], "gain": r["gain"],
                        "holdout_mse": r["holdout_mse"],
                        "gain_vs_plain": (plain - r["holdout_mse"]) if plain is not None and r["holdout_mse"]
                        is not None else None,
                        "phi_summary": phi_summary(r["phis"]) if r["adjust"] else None,
                        "phi": {str(k): v for k, v in r["phis"].items()} if r["adjust"] else None} for r in results],
        "phi": {str(k): v for k, v in best["phis"].items()}, "phi_summary": phi_summary(best["phis"]),
        "fit_samples": fit_set.to_json(), "holdout_samples": hold_set.to_json(), "validated": validate,
    }
    return final, best["latents"]
