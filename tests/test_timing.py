"""Timing fairness: on a model whose cost per full call is known (a sleep), measured speedup = NFE speedup."""

from __future__ import annotations

import time

from ertacli.calibration.samples import Samples
from ertacli.commands.eval import timed
from ertacli.runs.plan_runner import PlanRunner
from ertacli.plan import Plan, load_plan, model_id, recipe_key
from ertacli.runs.job import Job

import pytest

SLEEP = 0.4  # long enough that the model's own compute, even on a loaded machine, is a small share

REUSE = {"kind": "reuse", "order": 1, "abscissa": "sigma", "c": 0.0}
EXTRAPOLATE = {"kind": "extrapolate", "order": 2, "abscissa": "index", "c": 1.0}


@pytest.mark.parametrize("predictor", [REUSE, EXTRAPOLATE], ids=["reuse", "extrapolate-order-2"])
def test_paired_timing_matches_nfe_ratio(tmp_path, predictor):
    """Within 3% of the NFE ratio: a cached step costs one multiply-add per element even when extrapolating."""
    job = Job.make("tiny-flux-random", ["sampling.steps=8", "eval.timing_rounds=2", "eval.timing_samples=1"], "cpu")
    r = job.recipe
    plan = Plan(recipe=r.name, recipe_key=recipe_key(r), model_id=model_id(r), steps=8, scheduler={},
                residual="hidden", base_sigmas=[], branches=["cond"], cached_steps={"cond": [2, 4, 6]},
                sample_shape={}, calibration={}, predictor=predictor)
    plan.save(tmp_path / "plan")
    first = job.loaded.pipe.transformer.transformer_blocks[0]
    inner = next(iter(first.children()))  # runs only when the block stack really computes
    handle = inner.register_forward_pre_hook(lambda *a: time.sleep(SLEEP))
    try:
        timing = timed(job, Samples(["a seven"], [0]), PlanRunner(job.sampler, load_plan(tmp_path / "plan")))
    finally:
        handle.remove()
    ideal = plan.predicted_speedup
    assert ideal == 8 / 5
    assert abs(timing["speedup"] / ideal - 1) < 0.03, (timing, ideal)
    assert abs(timing["transformer_speedup"] / ideal - 1) < 0.03, (timing, ideal)
    assert timing["transformer_baseline_seconds"] <= timing["timing_baseline_seconds"]
    assert timing["timing_baseline_seconds"] > 8 * SLEEP
    assert timing["speedup_q1"] <= timing["speedup"] <= timing["speedup_q3"]
    # on a CPU device also the process-CPU-time speedup (a sleep costs no CPU time, so only its presence and spread)
    assert timing["cpu_speedup_q1"] <= timing["cpu_speedup"] <= timing["cpu_speedup_q3"]


# The estimator on crafted round timings, in exact arithmetic (Fractions): the headline is the median of the
# per-round ratios, so it lies inside their interquartile range, which a ratio of the pooled medians need not.

from fractions import Fraction as F  # noqa: E402

from ertacli.evaluation.timing import round_ratios, speedup_estimate, timing_note  # noqa: E402


def test_speedup_is_the_median_of_per_round_ratios_exactly():
    baseline = [[F(10), F(12)], [F(9), F(9)], [F(30), F(33)]]  # round medians 11, 9, 63/2
    cached = [[F(5), F(6)], [F(3), F(3)], [F(10), F(11)]]  # round medians 11/2, 3, 21/2
    assert round_ratios(baseline, cached) == [F(2), F(3), F(3)]
    speedup, q1, q3 = speedup_estimate(baseline, cached)
    assert (speedup, q1, q3) == (F(3), F(5, 2), F(3))


def test_old_ratio_of_medians_falls_outside_the_spread_and_the_new_headline_does_not():
    """A busy machine slows the baseline in one round and the cached runner in another."""
    import statistics

    baseline = [[F(1)], [F(10)], [F(10)], [F(1)]]
    cached = [[F(1)], [F(1)], [F(10)], [F(1)]]
    pooled = statistics.median([t for r in baseline for t in r]) / statistics.median([t for r in cached for t in r])
    speedup, q1, q3 = speedup_estimate(baseline, cached)
    assert (q1, q3) == (F(1), F(13, 4))  # ratios 1, 10, 1, 1
    assert pooled == F(11, 2) and not q1 <= pooled <= q3  # the old headline: outside its own spread
    assert speedup == F(1) and q1 <= speedup <= q3


@pytest.mark.parametrize("seed", range(20))
def test_headline_inside_spread_for_any_rounds(seed):
    import random

    rng = random.Random(seed)
    rounds, n = rng.randint(1, 7), rng.randint(1, 4)
    baseline = [[F(rng.randint(1, 100)) for _ in range(n)] for _ in range(rounds)]
    cached = [[F(rng.randint(1, 100)) for _ in range(n)] for _ in range(rounds)]
    speedup, q1, q3 = speedup_estimate(baseline, cached)
    assert q1 <= speedup <= q3
    assert min(round_ratios(baseline, cached)) <= q1 and q3 <= max(round_ratios(baseline, cached))


def test_one_round_is_its_own_spread_and_mismatched_rounds_are_refused():
    assert speedup_estimate([[F(4), F(6)]], [[F(2)]]) == (F(5, 2), F(5, 2), F(5, 2))
    with pytest.raises(ValueError, match="same number"):
        speedup_estimate([[F(1)]], [[F(1)], [F(1)]])


def test_timing_note_unchanged():
    assert timing_note(2.0, 1.95, 2.05, 3.0) == ""
    assert timing_note(2.0, 1.5, 2.5, 3.0) == "noisy: IQR 1.50-2.50"
    assert timing_note(2.0, 1.99, 2.01, 1.5) == "above ideal 1.50: timing noise"


def test_tables_show_both_speedups_with_their_spreads():
    import pandas as pd

    from ertacli.runs.headlines import speedup_text, with_spread

    row = {"speedup": 2.0, "speedup_q1": 1.9, "speedup_q3": 2.1, "timing_note": "",
           "cpu_speedup": 1.95, "cpu_speedup_q1": 1.94, "cpu_speedup_q3": 1.96}
    shown = with_spread(pd.DataFrame([row]))
    assert list(shown.columns) == ["speedup", "timing_note", "cpu_speedup"]
    assert shown.iloc[0]["speedup"] == "2.00 [1.90-2.10]" and shown.iloc[0]["cpu_speedup"] == "1.95 [1.94-1.96]"
    assert speedup_text(row) == "2.00x [IQR 1.90-2.10]; CPU time 1.95x [IQR 1.94-1.96]"
