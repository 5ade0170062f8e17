"""search: the threshold policy (paper Algorithm 2) -> a plan per lambda, or the smallest lambda meeting a target."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..plan import Plan, identity_fields
from .passes import calibration_pass
from .profile import Profile
from .samples import Samples


@dataclass(frozen=True)
class Target:
    """What a target search must reach: at least `cached_steps` cached calls, or a predicted `speedup`."""

    cached_steps: int | None = None
    speedup: float | None = None

    def met(self, plan: Plan) -> bool:
        if self.cached_steps is not None:
            return plan.n_cached >= self.cached_steps
        return plan.predicted_speedup >= self.speedup


def check_lambda(lam: float) -> float:
    """A threshold must be a finite number >= 0."""
    import math

    if not (lam >= 0 and math.isfinite(lam)):
        raise UserError(f"--lambda must be >= 0 and finite, got {lam}")
    return float(lam)


def search_plan(sampler, samples: Samples, profile: Profile, lam: float, cache_cfg, identity: dict,
                quiet: bool = True) -> Plan:
    """One lockstep calibration pass with the threshold decision at lambda; `identity` names the model.

    The pass and the ||R^gt_k|| it normalises by are the profile's fit part (`fit_part`): the held-out part that
    fit validates on never shapes the placement. The plan records the whole calibration set it belongs to.
    """
    from ..engine import SearchController
    from ..engine.predict import Predictor, predictor_spec

    T = sampler.steps
    fit_set, fit_profile = profile.fit_part(samples)
    gt = {b: rows["R"] for b, rows in fit_profile.stats.items()}
    pred = Predictor.from_plan(predictor_spec(cache_cfg), profile.base_sigmas)
    ctl = SearchController(T, check_lambda(lam), gt, cache_cfg.residual, pred)
    calibration_pass(sampler, ctl, fit_set.mine()[1], f"search lambda={lam:g}", quiet)
    branches = list(profile.branches)
    return Plan(
        **identity_fields(identity), steps=T,
        scheduler=profile.scheduler, residual=cache_cfg.residual, base_sigmas=profile.base_sigmas,
        branches=branches, cached_steps={b: sorted(ctl.cached_steps.get(b, [])) for b in branches},
        sample_shape=profile.sample_shape, lam=lam, predictor=pred.to_json(),
        calibration={**samples.to_json(), "searched_samples": len(fit_set), "profile_run": identity.get("profile_run")},
        search_errors={b: {str(k): e for k, e in sorted(ctl.errors[b].items())} for b in branches},
        model_class=profile.model_class, streams=profile.streams,
    )


def search_target(sampler, samples: Samples, profile: Profile, target: Target, cache_cfg, identity: dict,
                  iters: int = 12, quiet: bool = True, stop_exact: bool = False) -> Plan:
    """Smallest lambda (bisection) whose plan caches >= N calls or predicts >= X speedup.

    `stop_exact`: stop at the first lambda caching exactly N calls (any such lambda, not the smallest).
    """
    run = lambda lam: search_plan(sampler, samples, profile, lam, cache_cfg, identity, quiet)
    lo, hi = 0.0, 0.5
    best = run(hi)
    while not target.met(best):
        if hi >= 64:
            raise UserError(f"no lambda up to {hi} reaches the target (best: {best.n_cached} cached steps, "
                            f"{best.predicted_speedup:.2f}x); lower --cached-steps / --target-speedup")
        lo, hi = hi, hi * 2
        best = run(hi)
    exact = lambda p: stop_exact and target.cached_steps is not None and p.n_cached == target.cached_steps
    for _ in range(iters):
        if exact(best):
            break
        mid = 0.5 * (lo + hi)
        plan = run(mid)
        if target.met(plan):
            hi, best = mid, plan
        else:
            lo = mid
    best.method = "search-target"
    return best


def exact_count(plan: Plan, cached: int) -> Plan:
    """`plan` with exactly `cached` cached calls: the threshold's cached count jumps when several steps cross it
    at one lambda, so the smallest lambda that reaches a count may overshoot it; the overshoot is given back by
    computing again the cached calls with the largest search errors (the ones the threshold admitted last)."""
    extra = plan.n_cached - cached
    if extra <= 0:
        return plan
    ranked = sorted(((e, b, int(k)) for b, errs in plan.search_errors.items() for k, e in errs.items()
                     if int(k) in plan.cached_steps.get(b, [])), reverse=True)
    drop = {(b, k) for _, b, k in ranked[:extra]}
    steps = {b: [k for k in ks if (b, k) not in drop] for b, ks in plan.cached_steps.items()}
    return plan.copy(cached_steps=steps)


def cached_for(branches: list[str], steps: int, nfe: int, name: str, streams: dict | None = None) -> int:
    """Cached calls (summed over branches) that leave `nfe` transformer calls per sample.

    `streams` (the profile's step range per stream): streams that run part of the steps (Wan2.2's experts).
    """
    total = sum(last - first + 1 for first, last in (streams[b] for b in branches)) if streams else \
        len(branches) * steps
    if not 2 * len(branches) <= nfe <= total:
        raise UserError(f"--nfe {nfe} is out of range for {name}: steps 0 and T-1 always run, so "
                        f"choose {2 * len(branches)}..{total}")
    return total - nfe
