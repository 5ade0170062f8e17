"""bench: the paper's settings end to end (profile -> search -> fit -> generate -> eval) and one results table.

`make bench-flux` / `bench-wan` / `bench-cogvideox` call `ertacache bench --model RECIPE --lambda L`. Before any
work it checks what a real run needs (a CUDA GPU when one is asked for, the weights in the local Hugging Face
cache or a local folder) and stops with one line naming what is missing and the command that gets it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .common import Job, Samples

NO_GPU = "no CUDA GPU here: run on a GPU machine or BENCH_DEVICE=cpu with tiny weights"


def check_device(device: str | None) -> None:
    """A CUDA device asked for on a machine without one: one line saying so."""
    if device is None or not str(device).strip().lower().startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(NO_GPU)


def _hub_cached(repo: str) -> bool:
    """True when the hub repo's model_index.json (or config.json) is in the local HF cache; no network."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model_index.json", "config.json"):
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # noqa: BLE001 - a malformed id is simply "not cached"
            return False
        if isinstance(found, str):
            return True
    return False


def _default_repo(model: str) -> str | None:
    """The recipe's own hub id (before --set overrides), for the download hint."""
    from ..recipe import resolve_recipe

    path = resolve_recipe(model).model.path
    return path if path and not path.startswith(("/", ".", "~")) else None


def check_weights(recipe, model: str) -> None:
    """Pretrained weights neither in a local folder nor in the HF cache: one line with the download command."""
    from ..backbones.loader import model_path

    if recipe.model.source != "pretrained" or getattr(recipe.model, "adapter", None):
        return
    path = model_path(recipe)
    local = path.startswith(("/", ".", "~")) or os.path.exists(path)
    if local:
        if os.path.isdir(path):
            return
        repo = _default_repo(model) or "<hub id>"
        raise UserError(f"weights missing: {path} is not a directory; get them with "
                        f"`hf download {repo} --local-dir {path}`")
    if _hub_cached(path):
        return
    folder = f"models/{path.rstrip('/').split('/')[-1]}"
    raise UserError(f"weights missing: {path} is not in the local Hugging Face cache; get them with "
                    f"`hf download {path} --local-dir {folder}` and pass --set model.path={folder}")


def _row(job: Job, samples: Samples, base_dir: Path, plan_dir: Path, plan, label: str) -> dict:
    """Generate with a plan, score it against the baseline, time it (paired): one table row with latency."""
    from .evaluate import compare, paired_timing
    from .generate import run_generate
    from .methods import PlanMethod

    _reset_peak(job.device)
    _, s = compare(job, run_generate(job, samples, str(plan_dir)), base_dir, list(job.recipe.eval.metrics))
    s.update(paired_timing(job, samples, PlanMethod(job, str(plan_dir))))
    from .common import peak_memory

    fit = plan.fit or {}
    scores = {m: "missing" if str(s[m]).startswith("missing:") else s[m] for m in job.recipe.eval.metrics}
    return {"model": job.recipe.name, "method": label, "lambda": plan.lam, "cached_steps": plan.n_cached,
            "nfe": s["nfe"], "baseline_nfe": s["baseline_nfe"], **scores,
            "latency_s": s["timing_seconds"], "baseline_latency_s": s["timing_baseline_seconds"],
            "speedup": s["speedup"], "ideal_speedup": s["ideal_speedup"],
            "adjust": fit.get("decision", {}).get("adjust"), "rectify": fit.get("decision", {}).get("rectify"),
            "peak_memory_gb": peak_memory(job.device)["peak_bytes"] / 2**30, "plan": str(plan_dir),
            "missing": {m: s[m] for m in job.recipe.eval.metrics if scores[m] == "missing"}}


def _reset_peak(device: str) -> None:
    """Start a fresh CUDA peak-memory count (CPU peak RSS cannot be reset: it stays the process peak)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def run_bench(job: Job, lambdas: list[float], n_samples: int | None = None, with_ablation: bool = False):
    """profile -> search -> fit (validated) -> generate -> eval per lambda; returns (bench run dir, table)."""
    import pandas as pd

    from ..plan import find_plan_dir
    from ..tables import save_table
    from .common import write_resources
    from .demo import ablation
    from .fit import run_fit
    from .generate import run_generate
    from .profile import run_profile
    from .search import run_search

    profile_dir = run_profile(job)
    search_dir, summary = run_search(job, lambdas, str(profile_dir))
    samples = job.eval_samples()
    if n_samples:
        samples = samples.subset(list(range(min(n_samples, len(samples)))))
    base_dir = run_generate(job, samples, None)
    rows = []
    for rel in summary["plan"]:
        fit_dir, plan = run_fit(job, str(search_dir / rel))
        rows.append(_row(job, samples, base_dir, find_plan_dir(fit_dir), plan, "ertacache"))
    abl = ablation(job, samples, base_dir, search_dir / summary["plan"][0]) if with_ablation else []
    with job.rundir("bench") as run:
        job.start(run, "bench", samples.seeds)
        missing = {m: why for r in rows for m, why in r.pop("missing").items()}
        table = pd.DataFrame(rows)
        save_table(table, run.path, "bench")
        if abl:
            save_table(pd.DataFrame(abl), run.path, "ablation")
        run.write_json("bench.json", {"recipe": job.recipe.name, "device": job.device, "lambdas": lambdas,
                                      "profile": str(profile_dir), "search": str(search_dir),
                                      "baseline": str(base_dir), "samples": samples.to_json(),
                                      "rows": rows, "ablation": abl, "missing_metrics": missing})
        write_resources(run, job.device)
    shown = ["lambda", "cached_steps", "nfe", *job.recipe.eval.metrics, "latency_s", "baseline_latency_s",
             "speedup", "ideal_speedup", "peak_memory_gb"]
    short = {"cached_steps": "cached", "latency_s": "sec", "baseline_latency_s": "sec0", "ideal_speedup": "ideal",
             "peak_memory_gb": "peak GB"}
    return job.finished(run), table[shown].rename(columns=short)


def bench_job(model: str, sets: list[str] | None, device: str | None, quiet: bool,
              method: str | None = "ertacache") -> Job:
    """Resolve the recipe (with the method preset), check the GPU and the weights, then make the job."""
    from ..presets import method_overrides
    from ..recipe import resolve_recipe

    recipe = resolve_recipe(model, method_overrides(method) + list(sets or []))
    check_device(device)
    check_weights(recipe, model)
    return Job.make(model, sets, device, quiet=quiet, method=method)
