"""demo: the whole loop on one recipe in one process, summarised in one table."""

from __future__ import annotations

from pathlib import Path

from .common import Job


def run_demo(job: Job, lambdas: list[float]):
    """profile -> search (each lambda) -> fit -> generate -> eval; baseline and cached timed in this process."""
    import pandas as pd

    from ..plan import find_plan_dir, load_plan
    from ..tables import save_table
    from .evaluate import compare
    from .fit import run_fit
    from .generate import run_generate
    from .profile import run_profile
    from .search import run_search

    profile_dir = run_profile(job)
    search_dir, summary = run_search(job, lambdas, str(profile_dir))
    samples = job.eval_samples()
    base_dir = run_generate(job, samples, None)
    metrics = list(job.recipe.eval.metrics)
    rows = []
    for rel in summary["plan"]:
        fit_dir, plan = run_fit(job, str(search_dir / rel))
        plan_dir = find_plan_dir(fit_dir)
        cached_dir = run_generate(job, samples, str(plan_dir))
        _, s = compare(job, cached_dir, base_dir, metrics)
        rows.append({"lambda": plan.lam, "cached_steps": plan.n_cached, "nfe": s["nfe"],
                     "baseline_nfe": s["baseline_nfe"], "ideal_speedup": s["ideal_speedup"],
                     "speedup": s["speedup"], **{m: s[m] for m in metrics},
                     "adjust": plan.fit["decision"]["adjust"], "rectify": plan.fit["decision"]["rectify"],
                     "plan": str(plan_dir)})
    df = pd.DataFrame(rows)
    with job.rundir("demo") as run:
        job.start(run, "demo", samples.seeds)
        save_table(df, run.path, "demo")
        run.write_json("demo.json", {"profile": str(profile_dir), "search": str(search_dir),
                                     "baseline": str(base_dir), "rows": rows})
    return run.final_path, df.drop(columns=["plan"])
