"""sweep: a lambda grid through search -> fit -> generate -> eval, or every method preset at matched NFEs;
peers alongside, table and plots."""

from __future__ import annotations

from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError
from ..runs.job import Job
from .eval import peer_rows, plan_row


def calibration_quality(job: Job, plan, profile, timed_too: bool = True) -> dict:
    """PSNR of the plan's calibration outputs against the profile's uncached ones (and its paired speedup there)."""
    import torch

    from ..api import plan_controller
    from ..calibration.passes import calibration_pass
    from ..runs.plan_runner import PlanRunner
    from ..evaluation.scoring import mean_psnr
    from ..runs.media import to_uint8
    from .eval import timed

    samples, sampler = job.calibration(), job.sampler
    out = calibration_pass(sampler, plan_controller(plan, sampler.backbone.channel_dim), samples,
                           "calibration quality", job.quiet)
    ref = profile.media_uint8()
    pred = torch.from_numpy(to_uint8(out.media))
    psnr = mean_psnr([p.movedim(-1, -3).float() / 255 for p in pred], [r.movedim(-1, -3).float() / 255 for r in ref],
                     cap=float("inf"))
    quality = {"calib_psnr": psnr}
    if not timed_too:
        return quality
    return {**quality, "calib_speedup": timed(job, samples, PlanRunner(sampler, plan))["speedup"]}


def choose(rows: list[dict], pick_speedup: float | None, pick_psnr: float | None) -> dict | None:
    """The lambda meeting the target on the calibration set: best PSNR at >= X speedup, or fastest at >= Y dB."""
    if pick_speedup is None and pick_psnr is None:
        return None
    if pick_speedup is not None:
        ok = [r for r in rows if r["calib_speedup"] >= pick_speedup]
        pick = max(ok, key=lambda r: r["calib_psnr"]) if ok else None
        want = f"measured calibration speedup >= {pick_speedup:g}"
    else:
        ok = [r for r in rows if r["calib_psnr"] >= pick_psnr]
        pick = max(ok, key=lambda r: r["calib_speedup"]) if ok else None
        want = f"calibration PSNR >= {pick_psnr:g} dB"
    if pick is None:
        return {"lambda": None, "reason": f"no lambda in the grid reached {want}; widen --lambda"}
    return {"lambda": pick["lambda"], "reason": f"{want}: calibration PSNR {pick['calib_psnr']:.2f} dB, "
                                                f"speedup {pick['calib_speedup']:.2f}x", "plan": pick["plan"]}


def lambda_rows(job: Job, lambdas: list[float], profile, samples: Samples, base_dir: Path, compare_peers: bool):
    """One row per lambda (the recipe's method, validated fit), peers at each plan's NFE; (search dir, rows, plans)."""
    from .search import search, targets_of

    lams = ",".join(str(float(lam)) for lam in lambdas)
    search_dir, _, found = search(job.as_command("search", "--profile", profile.run, "--lambda", lams),
                                  targets_of(lambdas, None, None, None), profile)
    ours, peers, plans = [], [], []
    for result in found:
        plan = fitted(job, result.plan, profile)
        ours.append({**plan_row(job, samples, base_dir, plan, "ertacache"), **calibration_quality(job, plan, profile)})
        plans.append(plan)
        if compare_peers:
            peers += [{**r, "lambda": plan.lam} for r in peer_rows(job, samples, base_dir, plan)]
    return search_dir, ours, peers, plans


def preset_plan(job: Job, name: str, cached: int, profile) -> tuple[Job, object]:
    """(job with the preset, fitted plan) for preset `name` caching >= `cached` calls."""
    from ..calibration.run import Target
    from .search import search

    jv = job.variant(name)
    made = jv.as_command("search", "--profile", profile.run, "--cached-steps", cached)
    _, _, (result,) = search(made, [Target(cached=cached)], profile)
    return jv, fitted(jv, result.plan, profile)


def fitted(job: Job, searched, profile):
    """The plan after `fit` of a searched plan (recorded as a fit run); an auto plan is already fitted (its
    corrections were candidates of the search) and is taken as it is."""
    from .fit import fit

    if job.recipe.search.auto:
        return searched
    return fit(job.as_command("fit", "--plan", searched.folder), searched, profile)[1]


def matched_rows(job: Job, samples: Samples, base_dir: Path, profile, nfe: int, presets: list[str],
                 with_peers: bool) -> tuple[list[dict], list]:
    """Rows at one target NFE: every preset (best on calibration PSNR marked), then the peers; and the plans of
    our rows, in their order."""
    from ..calibration.search import cached_for

    cached = cached_for(list(profile.branches), job.recipe.sampling.steps, nfe, job.recipe.name, profile.streams)
    ours, plans = [], []
    for name in presets:
        jv, plan = preset_plan(job, name, cached, profile)
        row = {**plan_row(jv, samples, base_dir, plan, name),
               **calibration_quality(jv, plan, profile, timed_too=False)}
        if plan.auto:
            row["setting"] = plan.auto["winner"]["label"]
        ours.append({**row, "target_nfe": nfe, "best_calibrated": False})
        plans.append(plan)
    best = max(range(len(ours)), key=lambda i: ours[i]["calib_psnr"])
    ours[best]["best_calibrated"] = True
    peers = peer_rows(job, samples, base_dir, plans[best]) if with_peers else []
    return ours + [{**r, "target_nfe": nfe} for r in peers], plans


def profiled_plans(rows: list[dict], plans: list) -> list:
    """Plans whose search error the error profile shows: every lambda's, or per NFE the best calibrated one and,
    when that one was not thresholded (an auto schedule), the best calibrated thresholded preset too.
    `rows` are our rows (one per plan, in the order of `plans`)."""
    if not rows or "target_nfe" not in rows[0]:
        return list(plans)
    out, groups = [], {}
    for row, plan in zip(rows, plans):
        groups.setdefault(row["target_nfe"], []).append((row, plan))
    for group in groups.values():
        best = next(plan for row, plan in group if row["best_calibrated"])
        out.append(best)
        presets = sorted((rp for rp in group if str(rp[0]["method"]).startswith("ertacache")),
                         key=lambda rp: -rp[0]["calib_psnr"])
        if not best.search_errors and presets:
            out.append(presets[0][1])
    return out


def run_sweep(job: Job, lambdas: list[float], compare_peers: bool = False, pick_speedup: float | None = None,
              pick_psnr: float | None = None, nfes: list[int] | None = None, presets: list[str] | None = None,
              max_samples: int | None = None):
    """A lambda grid, or (nfes) every method preset and peer at matched NFEs; returns (run dir, table, choice)."""
    import pandas as pd

    from ..presets import METHODS
    from ..runs.plots import plot_error_profile, plot_pareto
    from ..runs.tables import save_table
    from .generate import run_generate
    from .profile import find_or_make_profile

    if pick_speedup is not None and pick_psnr is not None:
        raise UserError("give one of --pick-speedup or --pick-psnr, not both")
    if nfes and (pick_speedup is not None or pick_psnr is not None):
        raise UserError("--pick-speedup / --pick-psnr choose a lambda; they do not combine with --nfe")
    samples = job.eval_samples().take(max_samples or None)  # before any work: more than there are is refused
    profile = find_or_make_profile(job, None)
    base_dir = run_generate(job, samples, None)
    search_dir, picked = None, None
    if nfes:
        rows, ours, plans = [], [], []
        for n in nfes:
            r, p = matched_rows(job, samples, base_dir, profile, n, presets or list(METHODS), compare_peers)
            rows, ours, plans = rows + r, ours + r[:len(p)], plans + p
    else:
        search_dir, ours, peers, plans = lambda_rows(job, lambdas, profile, samples, base_dir, compare_peers)
        rows, picked = ours + peers, choose(ours, pick_speedup, pick_psnr)
    df = pd.DataFrame(rows)
    with job.rundir("sweep") as run:
        job.start(run, "sweep", samples.seeds)
        save_table(df, run.path, "sweep")
        if nfes and compare_peers:
            from ..runs.report import goal_cells

            save_table(goal_cells(df), run.path, "goal")
        plot_pareto(df, run.file("pareto.png"), f"{job.recipe.name}: quality vs measured speedup",
                    tuple(m for m in job.recipe.eval.metrics if m != "digit-acc") or ("psnr",))
        plot_error_profile(profiled_plans(ours, plans), run.file("error_profile.png"),
                           f"{job.recipe.name}: the search error each plan thresholded")
        run.write_json("sweep.json", {"profile": str(profile.run), "search": str(search_dir) if search_dir else None,
                                      "baseline": str(base_dir), "choice": picked, "lambdas": lambdas,
                                      "nfe": list(nfes or []), "methods": presets})
    return run.final_path, df, picked
