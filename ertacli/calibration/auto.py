"""auto: calibrated configuration search at a cached-call target (README "Methods", `--method auto`).

The calibration set is split once (`split_holdout`). Everything fitted — the threshold searches, the profile
statistics they normalise by, the corrections (adjust / rectify / gain) and the greedy placement refinement —
uses the fit part only; every candidate is scored on the held-out part by the PSNR of its decoded outputs
against their uncached outputs (`output_psnr`: eval's PSNR, on 8-bit frames as run directories store them),
ties to the cheaper candidate, then to the simpler one (`rank_key`). Stages, each a share of the budget of
scored candidates (`trials`):

1. families: the lambda threshold placement (search_target on the fit part) for hidden-space first- and
   second-order extrapolation and velocity-space second-order extrapolation (`lambda_families`), and the
   even schedule for every (space, predictor) pair;
2. schedules: every window / interval schedule of `schedules.py` for the two best (space, predictor) pairs;
3. corrections: the validated corrections (fit_plan's candidates) of the best plain candidates;
4. refinement: greedy ±1 moves (optimize_placement, on the fit part) of the best placement.

The winner is an ordinary plan (cached steps, predictor, residual space, optional corrections) with
`method: auto` and the settings that won in `plan.auto`; the winner and the runner-up are also scored on the fit
part, so over-fitting shows (`fit_psnr` in auto.csv).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..plan import Plan, identity_fields
from ..progress import task
from .auto_report import PREDICTORS, label, margin_db, save_auto, settings_of, summary  # noqa: F401 (public here)
from .fit import FitSettings, candidates, resolve_modes, score_candidates
from .profile import Profile
from .samples import Samples, split_holdout
from .schedules import branch_counts, describe, feasible_schedules, schedule_grid
from .search import Target, cached_for, search_target

# threshold searches cost a dozen fit-part passes each: the presets' two extrapolating ones and velocity x2
LAMBDA_FAMILIES = (("hidden", "x1"), ("hidden", "x2"), ("velocity", "x2"))
REFINE_SCORES = 2
SIMPLER = {"reuse": 0, "x1": 1, "x2": 2}  # tie order: reuse < extrapolate order 1 < order 2


@dataclass(frozen=True)
class AutoSettings:
    """The search's budget and families: `trials` scored candidates at most; the fit settings of stage 3."""

    trials: int = 40
    spaces: tuple[str, ...] = ("hidden", "velocity")
    predictors: tuple[str, ...] = ("x2", "x1", "reuse")
    lambda_families: tuple[tuple[str, str], ...] = LAMBDA_FAMILIES
    correct_top: int = 2
    refine_trials: int = 8  # fit-part placement moves of stage 4 (runs on the fit part, not scored trials)
    holdout: float = 0.25
    fit: FitSettings = field(default_factory=FitSettings)

    def __post_init__(self):
        if int(self.trials) < 1:
            raise UserError(f"--auto-trials must be >= 1, got {self.trials}")
        bad = [s for s in self.spaces if s not in ("hidden", "velocity")]
        if bad:
            raise UserError(f"auto searches the hidden and velocity residual spaces, not {bad[0]!r}")


def space_profile(profile: Profile, space: str) -> Profile:
    """Profile statistics in `space`: velocity-space R_k is the call's output v_k, which every profile records."""
    from dataclasses import replace

    if space == profile.residual:
        return profile
    if space != "velocity":
        raise UserError(f"a {profile.residual} profile gives no {space}-space statistics; profile in {space}")
    velocity = lambda stats: {b: dict(rows, R=list(rows["v"]), dR=list(rows["dv"]),
                                      dR_rel=[d / r if r > 0 else 0.0 for d, r in zip(rows["dv"], rows["v"])])
                              for b, rows in stats.items()}
    return replace(profile, residual="velocity", stats=velocity(profile.stats),
                   fit_stats=None if profile.fit_stats is None else velocity(profile.fit_stats))


def cache_settings(space: str, pred: str):
    """The recipe `cache:` section of one (space, predictor) pair."""
    from ..recipe import CacheCfg

    kind, order = PREDICTORS[pred]
    return CacheCfg(residual=space, predictor=kind, order=order, abscissa="sigma")


def schedule_plan(profile: Profile, identity: dict, fit_set: Samples, space: str, pred: str,
                  cached: dict[str, list[int]]) -> Plan:
    """A plan with given cached steps per branch (no threshold search) for one (space, predictor) pair."""
    from ..engine.predict import Predictor, predictor_spec

    spec = Predictor.from_plan(predictor_spec(cache_settings(space, pred)), profile.base_sigmas).to_json()
    return Plan(**identity_fields(identity),
                steps=profile.steps, scheduler=profile.scheduler, residual=space,
                base_sigmas=profile.base_sigmas, branches=list(profile.branches),
                cached_steps={b: sorted(cached[b]) for b in profile.branches},
                sample_shape=profile.sample_shape, predictor=spec, method="schedule",
                calibration={**fit_set.to_json(), "profile_run": identity.get("profile_run")},
                model_class=profile.model_class)


def output_psnr(media, ref_media) -> float:
    """Eval's PSNR (dB, data range 1, mean over frames) of each sample's 8-bit frames, summed over samples."""
    from ..evaluation.metrics import psnr

    q = lambda t: (t.clamp(0, 1) * 255).round() / 255
    return sum(psnr(q(m), q(r)) for m, r in zip(media, ref_media))


def scores(sampler, plan: Plan, samples: Samples, ref) -> tuple[float, float]:
    """(mean PSNR of the decoded outputs, MSE of the final latents) of `plan` on `samples` against the uncached
    outputs `ref` (a Profile of the same samples)."""
    from ..dist import all_sum
    from .passes import apply_controller, calibration_pass

    idx, mine = samples.mine()
    ctl = apply_controller(plan, sampler.backbone.channel_dim, plan.coeffs(), plan.adjusted_sigmas)
    out = calibration_pass(sampler, ctl, mine, "auto: score", True)
    psnr_sum = all_sum(output_psnr(out.media, ref.media[idx]))
    sq = all_sum(float(((out.latents.double() - ref.latents[idx].double()) ** 2).sum()))
    return psnr_sum / len(samples), sq / all_sum(float(out.latents.numel()))


def rank_key(r: dict) -> tuple:
    """Best held-out PSNR first; ties to fewer calls, then the simpler settings, then the earlier trial."""
    return (-r["holdout_psnr"], r["nfe"], SIMPLER[r["predictor"]], r["space"] != "hidden", r["gain"] == "fitted",
            int(r["adjust"]) + int(r["rectify"]), r["trial"])


class Trials:
    """The scored candidates so far, the budget, and the progress bar."""

    def __init__(self, sampler, hold_set: Samples, ref_hold, budget: int, advance):
        self.sampler, self.hold_set, self.ref_hold = sampler, hold_set, ref_hold  # ref: the held-out uncached run
        self.budget, self.advance, self.rows = budget, advance, []
        self.seen: dict[tuple, dict] = {}

    @property
    def left(self) -> int:
        return self.budget - len(self.rows)

    def score(self, plan: Plan, row: dict) -> dict | None:
        """Score `plan` on the held-out part and record it; None past the budget.

        A plan identical to one already scored (same space, predictor, cached steps and corrections) is not
        scored again: the earlier row is returned and no trial is spent.
        """
        key = (row["space"], row["predictor"], plan_cached(plan), row["gain"], row["adjust"], row["rectify"])
        if key in self.seen:
            return self.seen[key]
        if self.left <= 0:
            return None
        psnr, mse = scores(self.sampler, plan, self.hold_set, self.ref_hold)
        rec = {"trial": len(self.rows) + 1, **row, "cached": plan_cached(plan), "nfe": plan.nfe,
               "holdout_psnr": psnr, "holdout_mse": mse, "plan": plan}
        self.rows.append(rec)
        self.seen[key] = rec
        self.advance()
        return rec

    def ranked(self, **where) -> list[dict]:
        """Scored rows (those matching `where`), best first (`rank_key`)."""
        rows = [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]
        return sorted(rows, key=rank_key)


def plan_cached(plan: Plan) -> str:
    return "; ".join(f"{b}:{','.join(map(str, plan.cached_steps.get(b, [])))}" for b in plan.branches)


def base_row(stage: str, space: str, pred: str, placement: str, lam=None) -> dict:
    return {"stage": stage, "space": space, "predictor": pred, "placement": placement, "lambda": lam,
            "gain": "1" if pred != "reuse" else "-", "adjust": False, "rectify": False, "phi_summary": None}


@dataclass
class Context:
    """What every stage needs: the sampler, the split, the fit-part profile, the target and the trials."""

    sampler: object
    fit_set: Samples
    fit_profile: Profile  # the fit part's (hidden space)
    identity: dict
    target: int
    settings: AutoSettings
    trials: Trials

    def profile(self, space: str) -> Profile:
        return space_profile(self.fit_profile, space)

    def counts(self) -> dict[str, int]:
        return branch_counts(list(self.fit_profile.branches), self.target)


def lambda_candidate(ctx: Context, space: str, pred: str) -> dict | None:
    """Stage 1: the threshold policy searched on the fit part to the target count, scored on held-out."""
    if ctx.trials.left <= 0:
        return None
    try:
        plan = search_target(ctx.sampler, ctx.fit_set, ctx.profile(space), Target(cached_steps=ctx.target),
                             cache_settings(space, pred), ctx.identity, stop_exact=True)
    except UserError:
        return None
    return ctx.trials.score(plan, base_row("families", space, pred, f"lambda={plan.lam:.4g}", plan.lam))


def schedule_candidate(ctx: Context, stage: str, space: str, pred: str, params: dict, sets) -> dict | None:
    plan = schedule_plan(ctx.profile(space), ctx.identity, ctx.fit_set, space, pred, sets)
    return ctx.trials.score(plan, base_row(stage, space, pred, describe(params, sets, plan.steps)))


def family_order(settings: AutoSettings) -> list[tuple[str, str, str]]:
    """Stage 1's candidates in order: (kind "lambda" | "even", space, predictor), the two kinds interleaved."""
    lams = [("lambda", sp, p) for sp, p in settings.lambda_families if sp in settings.spaces
            and p in settings.predictors]
    evens = [("even", sp, p) for p in settings.predictors for sp in settings.spaces]
    inter = [x for pair in zip(lams, evens) for x in pair]
    n = min(len(lams), len(evens))
    return inter + lams[n:] + evens[n:]


def stage_families(ctx: Context, cap: int, schedules: list) -> None:
    """Lambda placements for the threshold families and the plain even schedule for every pair."""
    stop = len(ctx.trials.rows) + cap
    for kind, space, pred in family_order(ctx.settings):
        if len(ctx.trials.rows) >= stop:
            return
        if kind == "lambda":
            lambda_candidate(ctx, space, pred)
        elif schedules:
            schedule_candidate(ctx, "families", space, pred, *schedules[0])


def stage_schedules(ctx: Context, cap: int, schedules: list) -> None:
    """Every other schedule for the two best (space, predictor) pairs so far, alternating between them."""
    pairs = []
    for r in ctx.trials.ranked():
        if (r["space"], r["predictor"]) not in pairs:
            pairs.append((r["space"], r["predictor"]))
    stop = len(ctx.trials.rows) + cap
    for params, sets in schedules[1:]:
        for space, pred in pairs[:2]:
            if len(ctx.trials.rows) >= stop:
                return
            schedule_candidate(ctx, "schedules", space, pred, params, sets)


def correct(ctx: Context, base: dict, modes: list) -> list[dict]:
    """Stage 3 for one plain candidate: each correction fitted on the fit part, scored on held-out."""
    from ..engine.schedule import phi_summary

    out = []
    for mode in modes:
        if ctx.trials.left <= 0:
            break
        (res,) = score_candidates(ctx.sampler, base["plan"], ctx.profile(base["space"]), ctx.fit_set,
                                  ctx.trials.hold_set, None, [mode], ctx.settings.fit, validate=False)
        adj, rect, gn = mode
        row = {**{k: base[k] for k in ("space", "predictor", "placement", "lambda")}, "stage": "corrections",
               "gain": "fitted" if gn else base["gain"], "adjust": adj, "rectify": rect,
               "phi_summary": phi_summary(res["phis"]) if adj else None, "phis": res["phis"],
               "base_trial": base["trial"]}
        out.append(ctx.trials.score(res["plan"], row))
    return out


def stage_corrections(ctx: Context, cap: int) -> None:
    """The validated corrections of the best plain candidates (fewest parts first), within `cap` trials."""
    stop = len(ctx.trials.rows) + cap
    plain = sorted([r for r in ctx.trials.rows if not (r["adjust"] or r["rectify"] or r["gain"] == "fitted")],
                   key=rank_key)
    for base in plain[:ctx.settings.correct_top]:
        left = stop - len(ctx.trials.rows)
        if left <= 0:
            return
        adjust, rectify, gain = resolve_modes(ctx.settings.fit, base["plan"], ctx.sampler.pipe.scheduler)
        modes = [m for m in candidates(adjust, rectify, gain) if any(m)]
        modes.sort(key=lambda m: (sum(m), m))
        correct(ctx, base, modes[:left])


def stage_refine(ctx: Context) -> None:
    """Greedy ±1 moves of the best candidate's placement on the fit part; the moved plan is scored (plain, and
    with the best candidate's corrections re-fitted when it had any)."""
    from .placement import optimize_placement

    best = ctx.trials.ranked()[0] if ctx.trials.rows else None
    if best is None or ctx.trials.left <= 0:
        return
    base = next(r for r in ctx.trials.rows if r["trial"] == best.get("base_trial", best["trial"]))
    moved = optimize_placement(ctx.sampler, base["plan"], ctx.fit_set, ctx.fit_profile.latents,
                               ctx.settings.refine_trials, last_cacheable=True)
    if moved.cached_steps == base["plan"].cached_steps:
        return
    row = {**base, "stage": "refine", "placement": f"{base['placement']}+moves({moved.placement['trials']})"}
    row = {k: v for k, v in row.items() if k not in ("trial", "plan", "cached", "nfe", "holdout_mse", "holdout_psnr")}
    refined = ctx.trials.score(moved, row)
    mode = (best["adjust"], best["rectify"], best["gain"] == "fitted")
    if refined is not None and any(mode):
        correct(ctx, refined, [mode])


def split_budget(left: int, n_modes: int, top: int) -> tuple[int, int]:
    """(schedules, corrections) caps of what stage 1 left: the refinement keeps REFINE_SCORES, corrections get
    up to half of the rest (at most `top` candidates' modes), the schedules everything else."""
    refine = min(REFINE_SCORES, left)
    corr = min(top * n_modes, (left - refine) - (left - refine) // 2)
    return left - refine - corr, corr


def auto_search(sampler, samples: Samples, target_cached: int, identity: dict, settings: AutoSettings,
                quiet: bool = True) -> tuple[Plan, list[dict]]:
    """The best configuration at >= `target_cached` cached calls; returns (winner plan, every scored row).

    Both parts are run uncached once here: the fit part's statistics drive every choice, the held-out part's
    decoded outputs are the references the candidates are scored against.
    """
    from .profile import record_profile

    prompts = samples.unique_prompts()
    if len(prompts) < 2:
        raise UserError("--method auto scores candidates on held-out prompts: it needs >= 2 calibration prompts")
    fit_idx, hold_idx = split_holdout(samples, prompts, settings.holdout)
    fit_set, hold_set = samples.subset(fit_idx), samples.subset(hold_idx)
    fit_profile = record_profile(sampler, fit_set, "hidden")
    hold_ref = record_profile(sampler, hold_set, "hidden")  # the held-out references: outputs and latents
    branches = list(fit_profile.branches)
    cached_for(branches, sampler.steps, len(branches) * sampler.steps - target_cached, identity["recipe"])
    with task(f"auto: {settings.trials} candidates", settings.trials, quiet) as advance:
        ctx = Context(sampler, fit_set, fit_profile, identity, int(target_cached), settings,
                      Trials(sampler, hold_set, hold_ref, int(settings.trials), advance))
        schedules = feasible_schedules(sampler.steps, ctx.counts(), schedule_grid(sampler.steps))
        stage_families(ctx, ctx.trials.left, schedules)
        sched, _ = split_budget(ctx.trials.left, 7, settings.correct_top)
        stage_schedules(ctx, sched, schedules)
        stage_corrections(ctx, ctx.trials.left - min(REFINE_SCORES, ctx.trials.left))
        stage_refine(ctx)
    return winner_plan(ctx, fit_set, hold_set), ctx.trials.rows


def winner_plan(ctx: Context, fit_set: Samples, hold_set: Samples) -> Plan:
    """The best row's plan, with `method: auto` and `plan.auto` saying what won and by how much; the winner and
    the runner-up are scored on the fit part too (`fit_psnr`)."""
    ranked = ctx.trials.ranked()
    if not ranked:
        raise UserError("auto scored no candidate: raise --auto-trials")
    best = ranked[0]
    runner = next((r for r in ranked[1:] if label(r) != label(best)), None)
    for r in (best, runner):
        if r is not None:
            r["fit_psnr"] = scores(ctx.sampler, r["plan"], fit_set, ctx.fit_profile)[0]
    plan = best["plan"].copy(method="auto")
    plan.auto = {
        "winner": settings_of(best), "holdout_psnr": best["holdout_psnr"], "fit_psnr": best["fit_psnr"],
        "holdout_mse": best["holdout_mse"], "runner_up": settings_of(runner) if runner else None,
        "runner_up_psnr": runner["holdout_psnr"] if runner else None,
        "margin_db": margin_db(best, runner), "target_cached": ctx.target, "trials": len(ctx.trials.rows),
        "budget": ctx.trials.budget, "fit_samples": fit_set.to_json(), "holdout_samples": hold_set.to_json(),
        "score": "mean PSNR (dB) of the decoded held-out outputs against their uncached outputs, 8-bit frames",
        "summary": summary(best, runner),
    }
    return plan


