"""Paired timing: the uncached baseline and a cached runner alternated in one process; per-round ratios.

Each round times every sample with both runners (A B, then B A, ...) after an untimed warm-up round. A round's
ratio is its baseline median over its cached median; the speedup is the median of those per-round ratios and its
spread their interquartile range, so the headline always lies inside its spread (a ratio of the medians over all
rounds need not: one slow round for the baseline and another for the cached runner move it outside). The same
estimator runs on process CPU time, which a busy shared machine disturbs far less than wall time; it is reported
on a CPU device (on a GPU the wall time, synchronised, is the one that means something).
"""

from __future__ import annotations

import statistics
import time

WIDE = 0.10
"""An interquartile range wider than this share of the speedup is too noisy to rank rows by."""


def quartiles(values: list) -> tuple:
    """First and third quartile (inclusive method); a single value is both."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def round_ratios(baseline: list[list], cached: list[list]) -> list:
    """Each round's baseline median over its cached median (rounds paired in order)."""
    if not baseline or len(baseline) != len(cached):
        raise ValueError(f"need the same number (>= 1) of baseline and cached rounds, got {len(baseline)} "
                         f"and {len(cached)}")
    return [statistics.median(b) / statistics.median(c) for b, c in zip(baseline, cached)]


def speedup_estimate(baseline: list[list], cached: list[list]) -> tuple:
    """(speedup, q1, q3): the median of the per-round ratios and their interquartile range; q1 <= speedup <= q3.

    Plain arithmetic on whatever numbers come in, so Fractions give exact results (the tests use them)."""
    ratios = round_ratios(baseline, cached)
    q1, q3 = quartiles(ratios)
    return statistics.median(ratios), q1, q3


def _timed_run(runner, sub) -> tuple[list, float]:
    """One round of a runner over the samples: its outputs and the process CPU seconds of each call."""
    outs, cpu = [], []
    with runner as m:
        for p, s in zip(sub.prompts, sub.seeds):
            c0 = time.process_time()
            outs.append(m.run(p, s)[0])
            cpu.append(time.process_time() - c0)
    return outs, cpu


def paired_timing(samples, runner, baseline, rounds: int, n_samples: int, cpu: bool = False) -> dict:
    """Baseline and cached calls alternated after a warm-up round: medians, the speedup and its per-round IQR.

    With `cpu`, also the speedup in process CPU time (`cpu_speedup`, `cpu_speedup_q1/q3`)."""
    sub = samples.first(n_samples)
    runners = {"baseline": baseline, "cached": runner}
    wall: dict[str, list[list[float]]] = {"baseline": [], "cached": []}
    proc: dict[str, list[list[float]]] = {"baseline": [], "cached": []}
    inside: dict[str, list[float]] = {"baseline": [], "cached": []}  # seconds inside the transformer's calls
    for r in range(rounds + 1):
        for name in (("baseline", "cached") if r % 2 == 0 else ("cached", "baseline")):
            outs, cpu_s = _timed_run(runners[name], sub)
            if r > 0:
                wall[name].append([o.seconds for o in outs])
                proc[name].append(cpu_s)
                inside[name] += [o.transformer_seconds for o in outs]
    med = {k: statistics.median([t for rnd in v for t in rnd]) for k, v in wall.items()}
    speedup, q1, q3 = speedup_estimate(wall["baseline"], wall["cached"])
    tf = {k: statistics.median(v) for k, v in inside.items()}
    out = {"timing_baseline_seconds": med["baseline"], "timing_seconds": med["cached"],
           "speedup": speedup, "speedup_q1": q1, "speedup_q3": q3,
           "timing_rounds": len(wall["cached"]), "timing_calls": sum(len(v) for v in wall["cached"]),
           "transformer_baseline_seconds": tf["baseline"], "transformer_seconds": tf["cached"],
           "transformer_speedup": tf["baseline"] / tf["cached"]}
    if cpu:
        c, c1, c3 = speedup_estimate(proc["baseline"], proc["cached"])
        out.update({"cpu_speedup": c, "cpu_speedup_q1": c1, "cpu_speedup_q3": c3})
    return out


def timing_note(speedup: float, q1: float, q3: float, ideal: float | None) -> str:
    """'' for a speedup that can be ranked; else why not: its spread is too wide, or it exceeds the ideal."""
    notes = []
    if speedup > 0 and (q3 - q1) / speedup > WIDE:
        notes.append(f"noisy: IQR {q1:.2f}-{q3:.2f}")
    if ideal is not None and speedup > ideal * 1.005:
        notes.append(f"above ideal {ideal:.2f}: timing noise")
    return "; ".join(notes)
