"""eval: a generate run against the uncached baseline of the same prompts and seeds: quality, NFE, speedup."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, Samples, find_run, read_json
from .generate import GENERATE_FILE, load_outputs, run_generate
from .methods import PlanMethod


def baseline_for(job: Job, samples: Samples) -> Path:
    """The newest uncached generate run of these samples on this device and dtype, made now if missing."""
    digest = samples.digest()

    def match(d: dict) -> bool:
        return (d.get("kind") == "baseline" and d.get("recipe_key") == job.key and d.get("device") == job.device
                and d.get("dtype") == job.recipe.model.dtype and d.get("samples", {}).get("digest") == digest)

    from ..dist import WORLD, broadcast

    found = find_run(job.recipe.name, "generate", GENERATE_FILE, match) if WORLD.main else None
    found = broadcast(str(found) if found else None)
    return Path(found) if found is not None else run_generate(job, samples, None)


def paired_timing(job: Job, samples: Samples, method, baseline=None) -> dict:
    """Baseline and cached calls alternated (A B, then B A, ...) after a warm-up round; medians and their ratio."""
    import statistics

    from .methods import PlanMethod

    sub = samples.subset(list(range(min(len(samples), job.recipe.eval.timing_samples))))
    methods = {"baseline": baseline or PlanMethod(job, None), "cached": method}
    times: dict[str, list[float]] = {"baseline": [], "cached": []}
    inside: dict[str, list[float]] = {"baseline": [], "cached": []}  # seconds inside the transformer's calls
    for r in range(job.recipe.eval.timing_rounds + 1):
        for name in (("baseline", "cached") if r % 2 == 0 else ("cached", "baseline")):
            with methods[name] as m:
                outs = [m.run(p, s)[0] for p, s in zip(sub.prompts, sub.seeds)]
            if r > 0:
                times[name] += [o.seconds for o in outs]
                inside[name] += [getattr(o, "transformer_seconds", float("nan")) for o in outs]
    med = {k: statistics.median(v) for k, v in times.items()}
    tf = {k: statistics.median(v) for k, v in inside.items()}
    return {"timing_baseline_seconds": med["baseline"], "timing_seconds": med["cached"],
            "speedup": med["baseline"] / med["cached"], "timing_calls": len(times["cached"]),
            "transformer_baseline_seconds": tf["baseline"], "transformer_seconds": tf["cached"],
            "transformer_speedup": tf["baseline"] / tf["cached"]}


def _read_generate(path: Path, job: Job) -> tuple[dict, list[dict]]:
    import pandas as pd

    if not (path / GENERATE_FILE).is_file():
        raise UserError(f"{path} is not a generate run directory (no {GENERATE_FILE}); pass one with --run")
    info = read_json(path / GENERATE_FILE)
    if info.get("recipe_key") != job.key:
        raise UserError(f"generate run {path} used other model/sampling settings than recipe {job.recipe.name}")
    return info, pd.read_csv(path / "samples.csv").to_dict("records")


def compare(job: Job, cached_dir: Path, base_dir: Path, metric_names: list[str]):
    """Per-sample metrics and timings of a cached run against its baseline; returns (per-sample df, summary dict)."""
    import pandas as pd

    from ..metrics import compute_metrics
    from ..perceptual import missing_metrics

    info, rows = _read_generate(cached_dir, job)
    _, base_rows = _read_generate(base_dir, job)
    if [(r["prompt"], r["seed"]) for r in rows] != [(r["prompt"], r["seed"]) for r in base_rows]:
        raise UserError(f"{cached_dir} and baseline {base_dir} hold different prompts/seeds")
    missing = missing_metrics(metric_names)
    measured = [m for m in metric_names if m not in missing]
    scores = compute_metrics(measured, load_outputs(cached_dir, rows), load_outputs(base_dir, base_rows),
                             prompts=[r["prompt"] for r in rows]) if measured else [{} for _ in rows]
    per = pd.DataFrame([{"index": r["index"], "prompt": r["prompt"], "seed": r["seed"], "nfe": r["nfe"],
                         "baseline_nfe": b["nfe"], "seconds": r["seconds"], "baseline_seconds": b["seconds"],
                         "transformer_seconds": r.get("transformer_seconds", float("nan")), **s}
                        for r, b, s in zip(rows, base_rows, scores)])
    t_c, t_b = float(per["seconds"].median()), float(per["baseline_seconds"].median())
    summary = {"run": str(cached_dir), "baseline": str(base_dir), "plan": info.get("plan"),
               "samples": len(per), "nfe": float(per["nfe"].mean()), "baseline_nfe": float(per["baseline_nfe"].mean()),
               "seconds": t_c, "baseline_seconds": t_b, "speedup": t_b / t_c if t_c > 0 else None,
               "ideal_speedup": float(per["baseline_nfe"].mean() / per["nfe"].mean()),
               "transformer_share": float(per["transformer_seconds"].sum() / per["seconds"].sum())}
    summary.update({m: float(per[m].mean()) for m in measured})
    summary.update({m: f"missing: {reason}" for m, reason in missing.items()})
    return per, summary


def run_eval(job: Job, samples: Samples, plan_path: str | None = None, run_path: str | None = None,
             metrics: list[str] | None = None, with_peers: bool = False, vbench: bool = False):
    """Generate (if given a plan) and compare against the baseline; returns (eval run dir, summary)."""
    import pandas as pd

    from ..metrics import available
    from ..tables import save_table

    names = list(metrics or job.recipe.eval.metrics)
    unknown = [m for m in names if m not in available()]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)} in eval.metrics; available: {', '.join(available())}")
    if (plan_path is None) == (run_path is None):
        raise UserError("eval needs exactly one of --plan PLAN (generate now) or --run GENERATE_RUN")
    if run_path is not None:
        info, _ = _read_generate(Path(run_path), job)
        samples = Samples(info["samples"]["prompts"], info["samples"]["seeds"])
    base_dir = baseline_for(job, samples)
    cached_dir = Path(run_path) if run_path else run_generate(job, samples, plan_path)
    per, summary = compare(job, cached_dir, base_dir, names)
    if plan_path is not None:
        summary["speedup_runs"] = summary["speedup"]
        summary.update(paired_timing(job, samples, PlanMethod(job, plan_path)))
        summary["overhead"] = summary["speedup"] / summary["ideal_speedup"]
    if vbench:
        summary.update(vbench_scores(cached_dir))
    peers = []
    if with_peers:
        from ..plan import find_plan_dir
        from .compare import peer_rows

        plan_dir = find_plan_dir(plan_path or read_json(cached_dir / GENERATE_FILE)["plan"])
        peers = peer_rows(job, samples, base_dir, plan_dir, names)
    with job.rundir("eval") as run:
        job.start(run, "eval", samples.seeds)
        save_table(per, run.path, "per_sample")
        save_table(pd.DataFrame([summary]), run.path, "summary")
        if peers:
            save_table(pd.DataFrame(peers), run.path, "peers")
        run.write_json("eval.json", {**summary, "peers": peers})
    return run.final_path, summary, peers


def vbench_scores(run_dir: Path) -> dict:
    """VBench's standard dimensions on a video run, or one 'missing: ...' entry saying what is absent."""
    from ..perceptual import MetricUnavailable
    from ..vbench_eval import run_vbench

    try:
        return {f"vbench_{k}": v for k, v in run_vbench(run_dir).items()}
    except MetricUnavailable as exc:
        return {"vbench": f"missing: {exc}"}


def quality_gate(run_dir: Path, summary: dict, min_psnr: float | None, max_lpips: float | None) -> list[str]:
    """Why the plan falls short on the mean (empty when it passes), followed by the failing samples."""
    import pandas as pd

    per = pd.read_csv(run_dir / "per_sample.csv")
    reasons, samples = [], []
    for metric, bound, worse in (("psnr", min_psnr, lambda v, b: v < b), ("lpips", max_lpips, lambda v, b: v > b)):
        if bound is None:
            continue
        values = pd.to_numeric(per[metric], errors="coerce") if metric in per else pd.Series(dtype=float)
        if values.isna().all():
            reasons.append(f"{metric} was not measured (add it to eval.metrics or provide its weights)")
            continue
        if worse(float(values.mean()), bound):
            reasons.append(f"mean {metric} {values.mean():.4g} is past the bound {bound:g}")
        samples += [f"sample {r['index']} (seed {r['seed']}, {r['prompt']!r}): {metric} {v:.4g}"
                    for (_, r), v in zip(per.iterrows(), values) if worse(v, bound)]
    return reasons + samples if reasons else []
