"""The one calibration path: a sampler, its samples, a target and a method config in; typed results out.

`ertacli.calibrate` and `ertacache profile / search / fit` (and sweep, demo, bench, which compose them) all run
`calibrate_plan` or its stages (`record_profile`, `search_stage`, `fit_stage`); nothing here reads or writes a
run directory: the commands record what these return (`ertacli/runs/recorder.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserError
from ..plan import Plan
from .fit import FitSettings, fit_plan
from .profile import Profile, record_profile
from .samples import Samples
from .search import cached_for, exact_count, search_plan, search_target


@dataclass(frozen=True)
class Target:
    """What to calibrate for, exactly one of: a threshold `lam`, `cached` calls per sample (summed over
    branches), `nfe` transformer calls per sample, or a predicted `speedup` (the NFE ratio)."""

    lam: float | None = None
    cached: int | None = None
    nfe: int | None = None
    speedup: float | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.lam, self.cached, self.nfe, self.speedup)) != 1:
            raise UserError("give exactly one target: a lambda, a cached-step count, an NFE or a target speedup")
        if self.speedup is not None and not (math.isfinite(self.speedup) and self.speedup >= 1):
            raise UserError(f"--target-speedup must be a finite number >= 1, got {self.speedup}")


@dataclass(frozen=True)
class MethodConfig:
    """How to calibrate: the cache settings (residual space, predictor: a recipe's `cache:` section), the fit
    settings, and whether to run auto's configuration search (with its budget of scored candidates)."""

    cache: object  # recipe.CacheCfg
    fit: FitSettings = field(default_factory=FitSettings)
    auto: bool = False
    auto_trials: int = 40

    @classmethod
    def of_recipe(cls, recipe, **fit_overrides) -> "MethodConfig":
        """A resolved recipe's `cache:`, `fit:` and `search:` sections (its --method preset already applied)."""
        return cls(recipe.cache, FitSettings.of(recipe.fit, **fit_overrides), bool(recipe.search.auto),
                   int(recipe.search.auto_trials))

    @classmethod
    def preset(cls, name: str, auto_trials: int = 40) -> "MethodConfig":
        """A --method preset over the recipe defaults (what `ertacli.calibrate(method=...)` runs)."""
        from ..presets import get_method
        from ..recipe import CacheCfg, FitCfg

        m, settings = get_method(name), get_method(name).settings()
        return cls(CacheCfg(**settings["cache"]), FitSettings.of(FitCfg(**settings["fit"])), m.auto, int(auto_trials))


@dataclass
class Calibration:
    """What a calibration returns: the profile, the searched plan (before fit), the final plan, the fit's latents
    on the fit part, auto's scored candidates (its table) and the cached-call count the target came to."""

    profile: Profile
    plan: Plan
    searched: Plan | None = None
    fit_latents: object = None
    auto_rows: list[dict] | None = None
    target_cached: int | None = None

    @property
    def fit_report(self) -> dict | None:
        """The fit's decision and candidates (`plan.fit`), None for a plan that was not fitted."""
        return self.plan.fit


def cached_count(target: Target, branches: list[str], steps: int, name: str, streams: dict | None = None) -> int | None:
    """The target as cached calls per sample (summed over branches); None for a lambda (a threshold search).

    The one place the NFE and the speedup targets become counts: NFE n leaves n calls per sample, a predicted
    speedup X = BT / (BT - cached) needs at least BT (1 - 1/X) cached calls. `streams` (the profile's step range
    per stream) counts streams that run part of the steps (Wan2.2's experts).
    """
    total = len(branches) * steps
    if target.nfe is not None:
        return cached_for(list(branches), steps, target.nfe, name, streams)
    if target.speedup is not None:
        return int(math.ceil(total * (1.0 - 1.0 / float(target.speedup)) - 1e-9))
    if target.cached is not None:
        if not 0 <= target.cached <= total - 2 * len(branches):
            raise UserError(f"--cached-steps {target.cached} is out of range for {name}: choose "
                            f"0..{total - 2 * len(branches)} (steps 0 and T-1 always run)")
        return int(target.cached)
    return None


def search_stage(sampler, samples: Samples, profile: Profile, target: Target, method: MethodConfig, identity: dict,
                 quiet: bool = True) -> Plan:
    """The threshold policy: one lambda's plan, or the smallest lambda whose plan reaches the target count."""
    from .search import Target as Reach

    cached = cached_count(target, profile.branches, sampler.steps, identity["recipe"], profile.streams)
    if cached is None:
        return search_plan(sampler, samples, profile, target.lam, method.cache, identity, quiet)
    plan = search_target(sampler, samples, profile, Reach(cached_steps=cached), method.cache, identity, quiet=quiet)
    return exact_count(plan, cached) if target.nfe is not None else plan  # nfe=N: exactly N calls, not at most N


def fit_stage(sampler, plan: Plan, profile: Profile, samples: Samples, settings: FitSettings, holdout: float,
              quiet: bool = True) -> tuple[Plan, object]:
    """Fit `plan`'s corrections on the fit part, validated on the held-out part of the profile's samples against
    its uncached latents; (fitted plan, the chosen candidate's fit-part latents)."""
    if profile.latents is None:
        raise UserError("the profile holds no uncached latents to validate against; re-run `ertacache profile`")
    return fit_plan(sampler, plan, profile, samples, profile.latents, settings, holdout, quiet)


def auto_stage(sampler, samples: Samples, profile: Profile, target: Target, method: MethodConfig, identity: dict,
               holdout: float, quiet: bool = True) -> Calibration:
    """auto's configuration search at the target's cached count (a lambda: what the method's threshold policy
    caches at it on the fit part)."""
    from .auto import AutoSettings, auto_search

    cached = cached_count(target, profile.branches, sampler.steps, identity["recipe"], profile.streams)
    if cached is None:
        cached = search_plan(sampler, samples, profile, target.lam, method.cache, identity, quiet).n_cached
    settings = AutoSettings(trials=method.auto_trials, holdout=holdout,
                            fit=FitSettings(**{**method.fit.__dict__, "optimize_placement": False}))
    plan, rows = auto_search(sampler, samples, cached, identity, settings, quiet)
    return Calibration(profile, plan, auto_rows=rows, target_cached=cached)


def calibrate_plan(sampler, samples: Samples, target: Target, method: MethodConfig, identity: dict,
                   holdout: float = 0.25, profile: Profile | None = None, fit: bool = True,
                   quiet: bool = True) -> Calibration:
    """profile (unless given) -> search -> fit, or auto's configuration search, at one target.

    `profile` must be of `samples` split with `holdout` (checked); `fit=False` stops after the search.
    """
    if profile is None:
        profile = record_profile(sampler, samples, method.cache.residual, quiet=quiet, holdout=holdout)
    if profile.calibration.get("digest") != samples.digest():
        raise UserError("the profile was made on other calibration prompts or seeds; re-run `ertacache profile`")
    profile.fit_part(samples, holdout if profile.split is not None else None)  # the split it was made with
    if method.auto:
        return auto_stage(sampler, samples, profile, target, method, identity, holdout, quiet)
    searched = search_stage(sampler, samples, profile, target, method, identity, quiet)
    if not fit:
        return Calibration(profile, searched, searched)
    fitted, latents = fit_stage(sampler, searched, profile, samples, method.fit, holdout, quiet)
    return Calibration(profile, fitted, searched, latents)
