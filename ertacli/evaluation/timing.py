"""Paired timing: the uncached baseline and a cached runner alternated in one process, medians and their ratio."""

from __future__ import annotations


def paired_timing(samples, runner, baseline, rounds: int, n_samples: int) -> dict:
    """Baseline and cached calls alternated (A B, then B A, ...) after a warm-up round; medians and their ratio."""
    import statistics

    sub = samples.first(n_samples)
    runners = {"baseline": baseline, "cached": runner}
    times: dict[str, list[float]] = {"baseline": [], "cached": []}
    inside: dict[str, list[float]] = {"baseline": [], "cached": []}  # seconds inside the transformer's calls
    for r in range(rounds + 1):
        for name in (("baseline", "cached") if r % 2 == 0 else ("cached", "baseline")):
            with runners[name] as m:
                outs = [m.run(p, s)[0] for p, s in zip(sub.prompts, sub.seeds)]
            if r > 0:
                times[name] += [o.seconds for o in outs]
                inside[name] += [o.transformer_seconds for o in outs]
    med = {k: statistics.median(v) for k, v in times.items()}
    tf = {k: statistics.median(v) for k, v in inside.items()}
    return {"timing_baseline_seconds": med["baseline"], "timing_seconds": med["cached"],
            "speedup": med["baseline"] / med["cached"], "timing_calls": len(times["cached"]),
            "transformer_baseline_seconds": tf["baseline"], "transformer_seconds": tf["cached"],
            "transformer_speedup": tf["baseline"] / tf["cached"]}
