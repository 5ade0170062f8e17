"""Scoring: a cached run's samples against the uncached baseline's (metrics, NFE, time), and the quality gate."""

from __future__ import annotations


def score_samples(rows: list[dict], base_rows: list[dict], outputs: list, base_outputs: list,
                  metric_names: list[str]):
    """Per-sample metrics and timings of cached rows against baseline rows; returns (per-sample df, summary)."""
    import pandas as pd

    from .metrics import compute_metrics
    from .perceptual import missing_metrics

    missing = missing_metrics(metric_names)
    measured = [m for m in metric_names if m not in missing]
    scores = compute_metrics(measured, outputs, base_outputs, prompts=[r["prompt"] for r in rows]) \
        if measured else [{} for _ in rows]
    per = pd.DataFrame([{"index": r["index"], "prompt": r["prompt"], "seed": r["seed"], "nfe": r["nfe"],
                         "baseline_nfe": b["nfe"], "seconds": r["seconds"], "baseline_seconds": b["seconds"],
                         "transformer_seconds": r.get("transformer_seconds", float("nan")), **s}
                        for r, b, s in zip(rows, base_rows, scores)])
    t_c, t_b = float(per["seconds"].median()), float(per["baseline_seconds"].median())
    summary = {"samples": len(per), "nfe": float(per["nfe"].mean()), "baseline_nfe": float(per["baseline_nfe"].mean()),
               "seconds": t_c, "baseline_seconds": t_b, "speedup": t_b / t_c if t_c > 0 else None,
               "ideal_speedup": float(per["baseline_nfe"].mean() / per["nfe"].mean()),
               "transformer_share": float(per["transformer_seconds"].sum() / per["seconds"].sum())}
    summary.update({m: float(per[m].mean()) for m in measured})
    summary.update({m: f"missing: {reason}" for m, reason in missing.items()})
    return per, summary


def quality_gate(per, min_psnr: float | None, max_lpips: float | None) -> list[str]:
    """Why the per-sample table falls short on the mean (empty when it passes), followed by the failing samples."""
    import pandas as pd

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


def mean_psnr(outputs: list, refs: list, cap: float = 100.0) -> float:
    """Mean PSNR of outputs against references, each sample capped at `cap` dB (identical outputs are infinite)."""
    from .metrics import compute_metrics

    scores = compute_metrics(["psnr"], outputs, refs)
    return sum(min(s["psnr"], cap) for s in scores) / len(scores)
