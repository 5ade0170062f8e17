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
