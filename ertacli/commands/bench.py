"""bench: the paper's settings end to end (profile -> search -> fit -> generate -> eval) and one results table.

`make bench-flux` / `bench-wan` / `bench-cogvideox` call `ertacache bench --model RECIPE --lambda L`. Before any
work it checks what a real run needs (a CUDA GPU when one is asked for, the weights in the local Hugging Face
cache or a local folder) and stops with one line naming what is missing and the command that gets it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..runs.job import Job

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


def reset_peak(device: str) -> None:
    """Start a fresh CUDA peak-memory count (CPU peak RSS cannot be reset: it stays the process peak)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def bench_row(job: Job, samples, base_dir: Path, plan) -> dict:
    """`plan_row` with the bench's extra columns: fit decisions, peak memory, metrics named missing."""
    from ..runs.artifacts import peak_memory
    from .eval import plan_row

    reset_peak(job.device)
    row = plan_row(job, samples, base_dir, plan, "ertacache")
    fit = plan.fit or {}
    metrics = list(job.recipe.eval.metrics)
    scores = {m: "missing" if str(row[m]).startswith("missing:") else row[m] for m in metrics}
    return {"model": job.recipe.name, **row, **scores, "adjust": fit.get("decision", {}).get("adjust"),
            "rectify": fit.get("decision", {}).get("rectify"),
            "peak_memory_gb": peak_memory(job.device)["peak_bytes"] / 2**30,
            "missing": {m: row[m] for m in metrics if scores[m] == "missing"}}


def run_bench(job: Job, lambdas: list[float], n_samples: int | None = None, with_ablation: bool = False):
    """profile -> search -> fit (validated) -> generate -> eval per lambda; returns (bench run dir, table)."""
    import pandas as pd

    from ..runs.artifacts import write_resources
    from ..runs.tables import save_table
    from .demo import ablation
    from .fit import fit
    from .generate import run_generate
    from .profile import make_profile
    from .search import search, targets_of

    samples = job.eval_samples().take(n_samples or None)  # before any work: more than there are is refused
    profile = make_profile(job.as_command("profile"))
    search_dir, _, found = search(job, targets_of(lambdas, None, None, None), profile)
    base_dir = run_generate(job, samples, None)
    rows = [bench_row(job, samples, base_dir, fit(job, result.plan, profile)[1]) for result in found]
    abl = ablation(job, samples, base_dir, found[0].plan, profile) if with_ablation else []
    with job.rundir("bench") as run:
        job.start(run, "bench", samples.seeds)
        missing = {m: why for r in rows for m, why in r.pop("missing").items()}
        table = pd.DataFrame(rows)
        save_table(table, run.path, "bench")
        if abl:
            save_table(pd.DataFrame(abl), run.path, "ablation")
        run.write_json("bench.json", {"recipe": job.recipe.name, "device": job.device, "lambdas": lambdas,
                                      "profile": str(profile.run), "search": str(search_dir),
                                      "baseline": str(base_dir), "samples": samples.to_json(),
                                      "rows": rows, "ablation": abl, "missing_metrics": missing})
        write_resources(run, job.device)
    shown = ["lambda", "cached_steps", "nfe", *job.recipe.eval.metrics, "latency_s", "baseline_latency_s",
             "speedup", "ideal_speedup", "peak_memory_gb"]
    shown += ["cpu_speedup"] if "cpu_speedup" in table.columns else []
    short = {"cached_steps": "cached", "latency_s": "sec", "baseline_latency_s": "sec0", "ideal_speedup": "ideal",
             "peak_memory_gb": "peak GB", "cpu_speedup": "CPU-time speedup"}
    return job.finished(run), table[shown].rename(columns=short), rows


def bench_job(model: str, sets: list[str] | None, device: str | None, quiet: bool,
              method: str | None = None) -> Job:
    """Resolve the recipe (with the method preset), check the GPU and the weights, then make the job."""
    from ..presets import method_overrides
    from ..recipe import resolve_recipe

    recipe = resolve_recipe(model, method_overrides(method) + list(sets or []))
    check_device(device)
    check_weights(recipe, model)
    return Job.make(model, sets, device, quiet=quiet, method=method)
