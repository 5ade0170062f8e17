"""demo: the whole loop on one recipe in one process, summarised in one table, plus the paper's ablation."""

from __future__ import annotations

from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError
from ..plan import Plan
from ..runs.job import Job
from .eval import plan_row


def paper_plan(job: Job, plan: Plan, profile) -> tuple[Job, Plan]:
    """The paper's offline policy (reuse) with the same number of cached calls as `plan`: (job, plan)."""
    from ..calibration.run import Target
    from .search import search

    paper = job.variant("ertacache")
    if paper.recipe.cache == job.recipe.cache:
        return job, plan
    _, _, (result,) = search(paper, [Target(cached=plan.n_cached)], profile)
    return paper, result.plan


def ablation(job: Job, samples: Samples, base_dir: Path, plan: Plan, profile) -> list[dict]:
    """Paper Table 3 at one NFE: uniform cache, offline policy, + timestep adjustment, + error rectification."""
    from ..runs.recorder import record_uniform
    from .fit import fit

    job, plan = paper_plan(job, plan, profile)
    rows = [plan_row(job, samples, base_dir, record_uniform(job.recorder, plan), "uniform cache"),
            plan_row(job, samples, base_dir, plan, "offline policy")]
    for label, rect in (("+ timestep adjustment", "off"), ("+ error rectification", "on")):
        try:
            _, fitted = fit(job, plan, profile, adjust="on", rectify=rect)
        except UserError as exc:  # adjustment refused for this scheduler: report it, invent no row
            rows.append({"method": label, "lambda": plan.lam, "note": f"not run: {exc}"})
            continue
        rows.append(plan_row(job, samples, base_dir, fitted, label))
    return rows


def baseline_row(job: Job, base_dir: Path) -> dict:
    """The uncached baseline's own row: NFE and the reference-free metrics (digit-acc) of its samples."""
    from .eval import score_runs

    metrics = list(job.recipe.eval.metrics)
    _, s = score_runs(job, base_dir, base_dir, metrics)
    return {"method": "uncached baseline", "lambda": None, "cached_steps": 0, "nfe": s["nfe"],
            "baseline_nfe": s["baseline_nfe"], "ideal_speedup": 1.0, "speedup": 1.0, **{m: s[m] for m in metrics}}


def run_demo(job: Job, lambdas: list[float], with_ablation: bool = True, max_samples: int = 8):
    """profile -> search (each lambda) -> fit (validated) -> generate -> eval; baseline timed in this process.

    Library calls composed in memory; each step recorded as its own run as it returns."""
    import pandas as pd

    from ..presets import preset_of
    from ..runs.tables import save_table
    from .fit import fit
    from .generate import run_generate
    from .profile import make_profile
    from .search import search, targets_of

    if max_samples < 1:
        raise UserError(f"--samples must be at least 1, got {max_samples}")
    profile = make_profile(job.as_command("profile"))
    search_dir, _, found = search(job, targets_of(lambdas, None, None, None), profile)
    samples = job.eval_samples().first(max_samples)
    base_dir = run_generate(job, samples, None)
    rows = [baseline_row(job, base_dir)]
    for result in found:
        _, plan = fit(job, result.plan, profile)
        row = plan_row(job, samples, base_dir, plan, f"{preset_of(job.recipe)} (validated fit)")
        rows.append({**row, "adjust": plan.fit["decision"]["adjust"], "rectify": plan.fit["decision"]["rectify"]})
    abl = []
    with job.rundir("demo") as run:
        job.start(run, "demo", samples.seeds)
        if with_ablation:
            abl = ablation(job, samples, base_dir, found[len(found) // 2].plan, profile)
            save_table(pd.DataFrame(abl), run.path, "ablation")
        save_table(pd.DataFrame(rows), run.path, "demo")
        run.write_json("demo.json", {"profile": str(profile.run), "search": str(search_dir),
                                     "baseline": str(base_dir), "rows": rows, "ablation": abl})
    drop = lambda df: df.drop(columns=[c for c in ("plan", "run", "latency_s", "baseline_latency_s") if c in df.columns])
    return run.final_path, drop(pd.DataFrame(rows)), drop(pd.DataFrame(abl))
