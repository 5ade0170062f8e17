"""The final step T-1 is a plan's choice (SPEC "Residual cache"): a plan caching it validates, runs through the
API with the NFE it states and exports; schedule families and placement may cache it; the threshold search and
the uniform cache keep it computed; step 0 and a stream's first call stay computed."""

from __future__ import annotations

import pytest
import torch

import ertacli
from ertacli.calibration.placement import move, movable
from ertacli.calibration.schedules import describe, family_sets, feasible_schedules, interval_cached, schedule_grid
from ertacli.engine.schedule import uniform_cached_steps
from ertacli.errors import UserError
from ertacli.export import cache_dit_mask
from ertacli.plan import Plan, validate


def plan_of(T: int, cached: dict[str, list[int]], **kw) -> Plan:
    return Plan(recipe="t", recipe_key="k", model_id="m", steps=T, scheduler={}, residual="hidden", base_sigmas=[],
                branches=list(cached), cached_steps=cached, sample_shape={}, calibration={}, **kw)


def test_a_plan_caching_the_last_step_validates_and_step_0_is_refused():
    validate(plan_of(6, {"cond": [2, 5], "uncond": [5]}), branches=("cond", "uncond"))
    with pytest.raises(UserError, match=r"cached_steps.cond\[0\] = 0 is outside \[1, 5\]"):
        validate(plan_of(6, {"cond": [0, 5]}), branches=("cond",))
    with pytest.raises(UserError, match=r"cached_steps.cond\[1\] = 6 is outside \[1, 5\]"):
        validate(plan_of(6, {"cond": [2, 6]}), branches=("cond",))


def test_an_expert_streams_first_step_stays_computed():
    """A Wan2.2 expert stream that runs steps 3..5: its first call (step 3) has nothing to reuse."""
    plan = plan_of(6, {"high/cond": [1, 2], "low/cond": [3, 5]}, streams={"high/cond": [0, 2], "low/cond": [3, 5]})
    with pytest.raises(UserError, match=r"cached_steps.low/cond\[0\] = 3 is outside \[4, 5\]"):
        validate(plan, branches=("high/cond", "low/cond"))
    with pytest.raises(UserError, match=r"branch low/cond caches steps \[3\]; it can cache steps 4..5"):
        cache_dit_mask(plan)
    assert movable(plan, "low/cond", True) == (4, 5) and movable(plan, "low/cond", False) == (1, 4)


def test_a_plan_caching_the_last_step_runs_with_the_nfe_it_says(tiny_wan):
    loaded, recipe = tiny_wan
    T = recipe.sampling.steps
    plan = plan_of(T, {"cond": [2, T - 1], "uncond": [T - 1]})
    kwargs = dict(num_inference_steps=T, height=16, width=16, num_frames=5, guidance_scale=4.0, output_type="latent",
                  **loaded.encoder.pipeline_kwargs(["a red circle"], ""))
    base = loaded.pipe(**kwargs).frames
    with ertacli.cached(loaded.pipe, plan):
        out = loaded.pipe(**kwargs).frames
        stats = ertacli.last_call_stats(loaded.pipe)
    assert stats["nfe_per_branch"] == {"cond": T - 2, "uncond": T - 1} and stats["nfe"] == plan.nfe == 2 * T - 3
    assert stats["cached_per_branch"] == {"cond": 2, "uncond": 1}
    assert not torch.equal(out, base)  # the last step really came from the cache
    mask = cache_dit_mask(plan)["steps_computation_mask"]
    assert mask == [1] * (T - 1) + [0]  # the branches share only T-1


def test_schedule_families_have_a_tail_of_zero():
    T = 20
    # tail counts the computed steps at the end, T-1 included: tail 0 lets the pattern run into T-1
    assert interval_cached(T, 10, 2, first=1, tail=0) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert interval_cached(T, 10, 2, first=1, tail=1) is None  # 1..18 holds 9 alternating
    assert interval_cached(T, 3, 2, tail=0) == [15, 17, 19]
    assert interval_cached(T, 3, 2, tail=1) == [14, 16, 18]
    # even with tail 0: the window ends at T, the end of the run (no call), so T-1 is cached at T/2
    assert family_sets(T, {"cond": 10}, "even", first=1, tail=0) == {"cond": [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]}
    # tail 1 is the plain uniform cache (T-1 computed by its formula), and it leads the grid
    assert family_sets(T, {"cond": 10}, "even", first=1, tail=1) == {"cond": uniform_cached_steps(T, 10)}
    grid = schedule_grid(T)
    assert grid[0] == {"family": "even", "first": 1, "tail": 1}
    assert {"family": "even", "first": 1, "tail": 0} in grid and {"family": "interval", "i": 2, "tail": 0} in grid
    sched = feasible_schedules(T, {"cond": 10}, grid)
    assert sched[0][1] == {"cond": uniform_cached_steps(T, 10)}
    assert any(s["cond"][-1] == T - 1 for _, s in sched) and all(0 < k < T for _, s in sched for k in s["cond"])
    assert describe({"family": "interval", "i": 2, "first": 1, "tail": 0}, {"cond": list(range(1, 20, 2))}, T) \
        == "uniform(i=2,b=1,tail=0)"


def test_placement_moves_into_the_last_step_only_when_allowed():
    T = 8
    assert move(T, [5, 6], 7, 6) is None  # the paper's policy: T-1 stays computed
    assert move(T, [5, 6], 7, 6, 1, T - 1) == [5, 7]  # auto's refinement may cache it
    assert move(T, [5, 7], 6, 7, 1, T - 1) == [5, 6]  # and move it back
    assert movable(plan_of(T, {"cond": [2]}), "cond", True) == (1, T - 1)
    assert movable(plan_of(T, {"cond": [2]}), "cond", False) == (1, T - 2)


def test_the_engine_computes_step_0_even_when_a_plan_lists_it(tiny_flux):
    """Plans are validated before they reach the engine; the engine itself still never caches a stream's first
    call (nothing to reuse yet), twice in a row, and caches T-1 when listed."""
    from ertacli.backbones.sampler import Sampler
    from ertacli.calibration.passes import calibration_pass
    from ertacli.calibration.samples import Samples
    from ertacli.engine import ApplyController

    loaded, recipe = tiny_flux
    sampler = Sampler.from_recipe(loaded, recipe)
    T = sampler.steps
    ctl = ApplyController(T, {"cond": {0, T - 1}})
    for _ in range(2):
        calibration_pass(sampler, ctl, Samples(["a red circle"], [0]), "final step")
        assert dict(ctl.n_cached) == {"cond": 1} and dict(ctl.nfe) == {"cond": T - 1}


def test_auto_scores_candidates_that_cache_the_last_step(tiny_flux):
    """auto's schedule stage tries tail-0 schedules: some scored candidate caches T-1, and it is an ordinary,
    valid plan; its first stage still scores the plain uniform cache (T-1 computed by its formula)."""
    from ertacli.backbones.sampler import Sampler
    from ertacli.calibration.auto import AutoSettings, auto_search
    from ertacli.calibration.samples import Samples

    loaded, recipe = tiny_flux
    sampler = Sampler.from_recipe(loaded, recipe)
    T = sampler.steps
    samples = Samples.grid(["a red circle", "two blue squares", "a green line", "a yellow dot"], [0])
    ident = {"recipe": recipe.name, "recipe_key": "k", "model_id": "m", "profile_run": None}
    _, rows = auto_search(sampler, samples, 2, ident, AutoSettings(trials=30))
    last = [r for r in rows if T - 1 in r["plan"].cached_steps["cond"]]
    assert last and all(r["holdout_psnr"] == r["holdout_psnr"] for r in last)
    for r in last:
        validate(r["plan"], branches=("cond",))
        assert r["plan"].nfe == T - 2
    even = [r for r in rows if r["stage"] == "families" and r["placement"].startswith("even")]
    assert even and all(r["plan"].cached_steps["cond"] == uniform_cached_steps(T, 2) for r in even)
