"""Paired timing: the uncached baseline and a cached runner alternated in one process; medians, ratio, spread.

Each round times every sample with both runners (A B, then B A, ...) after an untimed warm-up round. The speedup
is the ratio of the medians over all rounds; its spread is the interquartile range of the per-round ratios.
"""

from __future__ import annotations

import statistics

WIDE = 0.10
"""An interquartile range wider than this share of the speedup is too noisy to rank rows by."""


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (inclusive method); a single value is both."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def paired_timing(samples, runner, baseline, rounds: int, n_samples: int) -> dict:
    """Baseline and cached calls alternated after a warm-up round: medians, their ratio and its per-round IQR."""
    sub = samples.first(n_samples)
    runners = {"baseline": baseline, "cached": runner}
    times: dict[str, list[list[float]]] = {"baseline": [], "cached": []}
    inside: dict[str, list[float]] = {"baseline": [], "cached": []}  # seconds inside the transformer's calls
    for r in range(rounds + 1):
        for name in (("baseline", "cached") if r % 2 == 0 else ("cached", "baseline")):
            with runners[name] as m:
                outs = [m.run(p, s)[0] for p, s in zip(sub.prompts, sub.seeds)]
            if r > 0:
                times[name].append([o.seconds for o in outs])
                inside[name] += [o.transformer_seconds for o in outs]
    flat = {k: [t for rnd in v for t in rnd] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in flat.items()}
    per_round = [statistics.median(b) / statistics.median(c) for b, c in zip(times["baseline"], times["cached"])]
    q1, q3 = quartiles(per_round)
    tf = {k: statistics.median(v) for k, v in inside.items()}
    return {"timing_baseline_seconds": med["baseline"], "timing_seconds": med["cached"],
            "speedup": med["baseline"] / med["cached"], "speedup_q1": q1, "speedup_q3": q3,
            "timing_rounds": len(per_round), "timing_calls": len(flat["cached"]),
            "transformer_baseline_seconds": tf["baseline"], "transformer_seconds": tf["cached"],
            "transformer_speedup": tf["baseline"] / tf["cached"]}


def timing_note(speedup: float, q1: float, q3: float, ideal: float | None) -> str:
    """'' for a speedup that can be ranked; else why not: its spread is too wide, or it exceeds the ideal."""
    notes = []
    if speedup > 0 and (q3 - q1) / speedup > WIDE:
        notes.append(f"noisy: IQR {q1:.2f}-{q3:.2f}")
    if ideal is not None and speedup > ideal * 1.005:
        notes.append(f"above ideal {ideal:.2f}: timing noise")
    return "; ".join(notes)
