"""sweep: a lambda grid through search -> fit -> generate -> eval, peers alongside, table and plots."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, calibration_pass, load_tensors


def calibration_quality(job: Job, plan_dir: Path, profile_dir: Path, timed: bool = True) -> dict:
    """PSNR of the plan's calibration outputs against the profile's uncached ones (and its paired speedup there)."""
    from ..media import to_uint8
    from ..metrics import compute_metrics
    from .evaluate import paired_timing
    from .methods import PlanMethod

    import torch

    samples = job.calibration()
    method = PlanMethod(job, str(plan_dir))
    out = calibration_pass(job, method.ctl, samples, "calibration quality")
    ref = load_tensors(profile_dir / "baseline_media.safetensors")["media"]
    pred = torch.from_numpy(to_uint8(out.media))
    scores = compute_metrics(["psnr"], [p.movedim(-1, -3).float() / 255 for p in pred],
                             [r.movedim(-1, -3).float() / 255 for r in ref])
    quality = {"calib_psnr": sum(s["psnr"] for s in scores) / len(scores)}
    return {**quality, "calib_speedup": paired_timing(job, samples, method)["speedup"]} if timed else quality


def choose(rows: list[dict], target_speedup: float | None, min_psnr: float | None) -> dict | None:
    """The lambda meeting the target on the calibration set: best PSNR at >= X speedup, or fastest at >= Y dB."""
    if target_speedup is None and min_psnr is None:
        return None
    if target_speedup is not None:
        ok = [r for r in rows if r["calib_speedup"] >= target_speedup]
        pick = max(ok, key=lambda r: r["calib_psnr"]) if ok else None
        want = f"measured calibration speedup >= {target_speedup:g}"
    else:
        ok = [r for r in rows if r["calib_psnr"] >= min_psnr]
        pick = max(ok, key=lambda r: r["calib_speedup"]) if ok else None
        want = f"calibration PSNR >= {min_psnr:g} dB"
    if pick is None:
        return {"lambda": None, "reason": f"no lambda in the grid reached {want}; widen --lambda"}
    return {"lambda": pick["lambda"], "reason": f"{want}: calibration PSNR {pick['calib_psnr']:.2f} dB, "
                                                f"speedup {pick['calib_speedup']:.2f}x", "plan": pick["plan"]}


def lambda_rows(job: Job, lambdas: list[float], pdir: Path, samples, base_dir: Path, compare_peers: bool):
    """One row per lambda (the recipe's method, validated fit), peers at each plan's NFE; (search dir, rows, plans)."""
    from ..plan import find_plan_dir
    from .compare import peer_rows
    from .demo import _row
    from .fit import run_fit
    from .search import run_search

    search_dir, summary = run_search(job, lambdas, str(pdir))
    ours, peers, plans = [], [], []
    for rel in summary["plan"]:
        fit_dir, plan = run_fit(job, str(search_dir / rel))
        plan_dir = find_plan_dir(fit_dir)
        row = {**_row(job, samples, base_dir, plan_dir, "ertacache", plan), **calibration_quality(job, plan_dir, pdir)}
        row["method"] = row.pop("row")
        ours.append(row)
        plans.append(plan)
        if compare_peers:
            peers += [{**r, "lambda": plan.lam}
                      for r in peer_rows(job, samples, base_dir, plan_dir, list(job.recipe.eval.metrics))]
    return search_dir, ours, peers, plans


def run_sweep(job: Job, lambdas: list[float], compare_peers: bool = False, target_speedup: float | None = None,
              min_psnr: float | None = None, nfes: list[int] | None = None, methods: list[str] | None = None,
              max_samples: int | None = None):
    """A lambda grid, or (nfes) every method preset and peer at matched NFEs; returns (run dir, table, choice)."""
    import pandas as pd

    from ..plots import plot_error_profile, plot_pareto
    from ..presets import METHODS
    from ..tables import save_table
    from .generate import run_generate
    from .matched import matched_rows
    from .profile import find_or_make_profile

    if target_speedup is not None and min_psnr is not None:
        raise UserError("give one of --target-speedup or --min-psnr, not both")
    if nfes and (target_speedup is not None or min_psnr is not None):
        raise UserError("--target-speedup / --min-psnr choose a lambda; they do not combine with --nfe")
    profile, pdir = find_or_make_profile(job, None)
    samples = job.eval_samples()
    if max_samples:
        samples = samples.subset(list(range(min(len(samples), max_samples))))
    base_dir = run_generate(job, samples, None)
    search_dir, picked = None, None
    if nfes:
        rows, plans = [], []
        for n in nfes:
            r, p = matched_rows(job, samples, base_dir, profile, Path(pdir), n, methods or list(METHODS),
                                compare_peers)
            rows, plans = rows + r, plans + p
    else:
        search_dir, ours, peers, plans = lambda_rows(job, lambdas, Path(pdir), samples, base_dir, compare_peers)
        rows, picked = ours + peers, choose(ours, target_speedup, min_psnr)
    df = pd.DataFrame(rows)
    with job.rundir("sweep") as run:
        job.start(run, "sweep", samples.seeds)
        save_table(df, run.path, "sweep")
        plot_pareto(df, run.file("pareto.png"), f"{job.recipe.name}: quality vs measured speedup")
        plot_error_profile(profile, plans, run.file("error_profile.png"),
                           f"{job.recipe.name}: per-step residual change, cached steps marked")
        run.write_json("sweep.json", {"profile": str(pdir), "search": str(search_dir) if search_dir else None,
                                      "baseline": str(base_dir), "choice": picked, "lambdas": lambdas,
                                      "nfe": list(nfes or []), "methods": methods})
    return run.final_path, df, picked
