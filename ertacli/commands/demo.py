"""demo: the whole loop on one recipe in one process, summarised in one table, plus the paper's ablation."""

from __future__ import annotations

from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError
from ..plan import Plan
from ..runs.job import Job
from .eval import plan_row, save_uniform


def paper_plan(job: Job, plan: Plan, profile_dir: Path) -> tuple[Job, Plan]:
    """The paper's offline policy (reuse) with the same number of cached calls as `plan`: (job, plan)."""
    from ..plan import load_plan
    from ..presets import method_overrides
    from .search import run_search

    paper = job.variant(method_overrides("ertacache"))
    if paper.recipe.cache == job.recipe.cache:
        return job, plan
    search_dir, df = run_search(paper, [], str(profile_dir), cached_steps=plan.n_cached)
    return paper, load_plan(search_dir / df["plan"].iloc[0])


def ablation(job: Job, samples: Samples, base_dir: Path, plan_dir: Path, profile_dir: Path) -> list[dict]:
    """Paper Table 3 at one NFE: uniform cache, offline policy, + timestep adjustment, + error rectification."""
    from ..plan import find_plan_dir, load_plan
    from .fit import run_fit

    job, plan = paper_plan(job, load_plan(plan_dir), profile_dir)
    rows = [plan_row(job, samples, base_dir, save_uniform(job, plan), "uniform cache"),
            plan_row(job, samples, base_dir, plan.folder, "offline policy")]
    for label, rect in (("+ timestep adjustment", "off"), ("+ error rectification", "on")):
        try:
            fit_dir, fitted = run_fit(job, str(plan.folder), "on", rect)
        except UserError as exc:  # adjustment refused for this scheduler: report it, invent no row
            rows.append({"method": label, "lambda": plan.lam, "note": f"not run: {exc}"})
            continue
        rows.append(plan_row(job, samples, base_dir, find_plan_dir(fit_dir), label))
    return rows


def baseline_row(job: Job, base_dir: Path) -> dict:
    """The uncached baseline's own row: NFE and the reference-free metrics (digit-acc) of its samples."""
    from .eval import score_runs

    metrics = list(job.recipe.eval.metrics)
    _, s = score_runs(job, base_dir, base_dir, metrics)
    return {"method": "uncached baseline", "lambda": None, "cached_steps": 0, "nfe": s["nfe"],
            "baseline_nfe": s["baseline_nfe"], "ideal_speedup": 1.0, "speedup": 1.0, **{m: s[m] for m in metrics}}


def run_demo(job: Job, lambdas: list[float], with_ablation: bool = True, max_samples: int = 8):
    """profile -> search (each lambda) -> fit (validated) -> generate -> eval; baseline timed in this process."""
    import pandas as pd

    from ..plan import find_plan_dir
    from ..presets import preset_of
    from ..runs.tables import save_table
    from .fit import run_fit
    from .generate import run_generate
    from .profile import run_profile
    from .search import run_search

    if max_samples < 1:
        raise UserError(f"--samples must be at least 1, got {max_samples}")
    profile_dir = run_profile(job.as_command("profile"))
    search_dir, summary = run_search(job, lambdas, str(profile_dir))
    samples = job.eval_samples().first(max_samples)
    base_dir = run_generate(job, samples, None)
    rows = [baseline_row(job, base_dir)]
    for rel in summary["plan"]:
        fit_dir, plan = run_fit(job, str(search_dir / rel))
        row = plan_row(job, samples, base_dir, find_plan_dir(fit_dir), f"{preset_of(job.recipe)} (validated fit)")
        rows.append({**row, "adjust": plan.fit["decision"]["adjust"], "rectify": plan.fit["decision"]["rectify"]})
    abl = []
    with job.rundir("demo") as run:
        job.start(run, "demo", samples.seeds)
        if with_ablation:
            mid = summary["plan"][len(summary["plan"]) // 2]
            abl = ablation(job, samples, base_dir, search_dir / mid, profile_dir)
            save_table(pd.DataFrame(abl), run.path, "ablation")
        save_table(pd.DataFrame(rows), run.path, "demo")
        run.write_json("demo.json", {"profile": str(profile_dir), "search": str(search_dir),
                                     "baseline": str(base_dir), "rows": rows, "ablation": abl})
    drop = lambda df: df.drop(columns=[c for c in ("plan", "run", "latency_s", "baseline_latency_s") if c in df.columns])
    return run.final_path, drop(pd.DataFrame(rows)), drop(pd.DataFrame(abl))
