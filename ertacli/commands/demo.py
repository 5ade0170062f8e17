"""demo: the whole loop on one recipe in one process, summarised in one table, plus the paper's ablation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..errors import UserError
from ..plan import Plan
from .common import Job, Samples


def uniform_plan(plan: Plan) -> Plan:
    """The ablation's first row: the same |S| per branch, evenly spaced (SPEC "Uniform cache")."""
    from ..engine.schedule import uniform_cached_steps

    p = Plan(**asdict(plan))
    p.cached_steps = {b: uniform_cached_steps(p.steps, len(s)) for b, s in plan.cached_steps.items()}
    p.method, p.fit, p.adjusted_sigmas, p.rectify, p.search_errors = "uniform", None, None, None, {}
    return p


def save_uniform(job: Job, plan: Plan) -> Path:
    """Write the uniform counterpart of `plan` as its own run; returns the plan folder."""
    with job.rundir("uniform") as run:
        job.start(run, "uniform", plan.calibration["seeds"])
        uniform_plan(plan).save(run.subdir("plan"))
    return run.final_path / "plan"


def _row(job: Job, samples: Samples, base_dir: Path, plan_dir: Path, label: str, plan: Plan) -> dict:
    """Generate with a plan, compare with the baseline and time it: one table row."""
    from .compare import method_row
    from .methods import PlanMethod

    row = method_row(job, samples, base_dir, PlanMethod(job, str(plan_dir)), label, list(job.recipe.eval.metrics))
    return {"row": row.pop("method"), "lambda": plan.lam, "cached_steps": plan.n_cached, **row, "plan": str(plan_dir)}


def paper_plan(job: Job, plan: Plan, plan_dir: Path, profile_dir: Path) -> tuple[Job, Path, Plan]:
    """The paper's offline policy (reuse) with the same number of cached calls as `plan`: (job, folder, plan)."""
    from ..plan import find_plan_dir, load_plan
    from ..presets import method_overrides
    from .search import run_search

    paper = job.variant(method_overrides("ertacache"))
    if paper.recipe.cache == job.recipe.cache:
        return job, plan_dir, plan
    search_dir, df = run_search(paper, [], str(profile_dir), cached_steps=plan.n_cached)
    folder = find_plan_dir(search_dir / df["plan"].iloc[0])
    return paper, folder, load_plan(folder)[0]


def ablation(job: Job, samples: Samples, base_dir: Path, plan_dir: Path, profile_dir: Path) -> list[dict]:
    """Paper Table 3 at one NFE: uniform cache, offline policy, + timestep adjustment, + error rectification."""
    from ..plan import find_plan_dir, load_plan
    from .fit import run_fit

    job, plan_dir, plan = paper_plan(job, load_plan(plan_dir)[0], plan_dir, profile_dir)
    uni_dir = save_uniform(job, plan)
    rows = [_row(job, samples, base_dir, uni_dir, "uniform cache", load_plan(uni_dir)[0]),
            _row(job, samples, base_dir, plan_dir, "offline policy", plan)]
    for label, rect in (("+ timestep adjustment", "off"), ("+ error rectification", "on")):
        try:
            fit_dir, fitted = run_fit(job, str(plan_dir), "on", rect)
        except UserError as exc:  # adjustment refused for this scheduler: report it, invent no row
            rows.append({"row": label, "lambda": plan.lam, "note": f"not run: {exc}"})
            continue
        rows.append(_row(job, samples, base_dir, find_plan_dir(fit_dir), label, fitted))
    return rows


def baseline_row(job: Job, base_dir: Path) -> dict:
    """The uncached baseline's own row: NFE and the reference-free metrics (digit-acc) of its samples."""
    from .evaluate import compare

    metrics = list(job.recipe.eval.metrics)
    _, s = compare(job, base_dir, base_dir, metrics)
    return {"row": "uncached baseline", "lambda": None, "cached_steps": 0, "nfe": s["nfe"],
            "baseline_nfe": s["baseline_nfe"], "ideal_speedup": 1.0, "speedup": 1.0, **{m: s[m] for m in metrics}}


def run_demo(job: Job, lambdas: list[float], with_ablation: bool = True, max_samples: int = 8):
    """profile -> search (each lambda) -> fit (validated) -> generate -> eval; baseline timed in this process."""
    import pandas as pd

    from ..plan import find_plan_dir
    from ..presets import preset_of
    from ..tables import save_table
    from .fit import run_fit
    from .generate import run_generate
    from .profile import run_profile
    from .search import run_search

    profile_dir = run_profile(job)
    search_dir, summary = run_search(job, lambdas, str(profile_dir))
    samples = job.eval_samples()
    samples = samples.subset(list(range(min(len(samples), max_samples))))
    base_dir = run_generate(job, samples, None)
    rows = [baseline_row(job, base_dir)]
    for rel in summary["plan"]:
        fit_dir, plan = run_fit(job, str(search_dir / rel))
        row = _row(job, samples, base_dir, find_plan_dir(fit_dir), f"{preset_of(job.recipe)} (validated fit)", plan)
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
    drop = lambda df: df.drop(columns=[c for c in ("plan", "run") if c in df.columns])
    return run.final_path, drop(pd.DataFrame(rows)), drop(pd.DataFrame(abl))
