"""Step-count transfer (SPEC "Plans across settings"): the rule's arithmetic on toy schedules whose sigmas are
dyadic (every distance and interpolation below is exact in floating point), and the Plan -> Plan transfer."""

from __future__ import annotations

import pytest
import torch

from ertacli.errors import PlanMismatch
from ertacli.plan import Plan
from ertacli.transfer import (branch_counts, cached_runs, computed_count, drop_closest, fit_count, interpolate,
                              mapped_computed, nearest_step, split_longest_run, stream_ranges, transfer_plan)


def linear(T: int) -> list[float]:
    """s_k = 1 - k/T for k = 0..T (the final 0 included): dyadic for T a power of two."""
    return [1 - k / T for k in range(T + 1)]


def toy_plan(T=8, cached=(1, 2, 4, 6), **kw) -> Plan:
    return Plan(recipe="toy", recipe_key="k", model_id="FluxPipeline:toy", steps=T, scheduler={}, residual="hidden",
                base_sigmas=linear(T), branches=["cond"], cached_steps={"cond": list(cached)},
                sample_shape={"cond": [4, 2, 2]}, calibration={}, settings={"steps": T}, **kw)


def test_nearest_step_ties_go_to_the_earlier_step():
    s = linear(4)  # 1, .75, .5, .25, 0
    assert nearest_step(s, 0.625, 0, 3) == 1  # .75 and .5 are both .125 away
    assert nearest_step(s, 0.7, 0, 3) == 1 and nearest_step(s, 0.3, 0, 3) == 3 and nearest_step(s, 0.9, 2, 3) == 2


def test_sigma_mapping_of_computed_steps():
    old, new = linear(8), linear(16)
    # computed 0, 3, 5, 7 at T=8: sigmas 1, 5/8, 3/8, 1/8 -> steps 0, 6, 10, 14 at T=16; 15 kept
    assert mapped_computed(old, [0, 3, 5, 7], new, 0, 15, keep=[0, 15]) == {0, 6, 10, 14, 15}
    assert mapped_computed(old, [0, 3, 5, 7], linear(4), 0, 3, keep=[0, 3]) == {0, 1, 2, 3}


def test_nfe_share_rounds_half_up_within_bounds():
    assert computed_count(0.5, 14) == 7 and computed_count(0.5, 28) == 14 and computed_count(0.5, 15) == 8
    assert computed_count(0.1, 8) == 2 and computed_count(1.0, 5) == 5 and computed_count(0.3, 1) == 1
    # a total NFE split over branches in proportion to their shares, largest remainder first
    assert branch_counts({"c": 0.5, "u": 0.25}, {"c": 12, "u": 12}, None) == {"c": 6, "u": 3}
    assert branch_counts({"c": 0.5, "u": 0.25}, {"c": 12, "u": 12}, 10) == {"c": 7, "u": 3}


def test_split_longest_cached_run_at_its_middle():
    assert cached_runs({0, 6, 10, 14, 15}, 0, 15) == [(1, 5), (7, 9), (11, 13)]
    assert split_longest_run({0, 6, 10, 14, 15}, 0, 15) == {0, 3, 6, 10, 14, 15}
    # equal runs: the earliest (highest sigma) is split
    assert split_longest_run({0, 3, 6, 10, 14, 15}, 0, 15) == {0, 3, 6, 8, 10, 14, 15}
    assert fit_count({0, 6, 10, 14, 15}, 8, 0, 15, [0, 15]) == {0, 3, 6, 8, 10, 12, 14, 15}


def test_drop_the_computed_step_whose_neighbours_are_closest():
    # neighbours of 1: 0 and 2 (gap 2), of 2: 1 and 3 (gap 2) -> the earliest goes; 0 and 3 are kept
    assert drop_closest({0, 1, 2, 3}, [0, 3], 3) == {0, 2, 3}
    assert drop_closest({0, 2, 3, 7, 9}, [0, 9], 9) == {0, 3, 7, 9}  # gaps: 2 -> 0..3 (3), 3 -> 2..7, 7 -> 3..9
    assert fit_count({0, 1, 2, 3}, 2, 0, 3, [0, 3]) == {0, 3}
    with pytest.raises(ValueError):
        drop_closest({0, 3}, [0, 3], 3)


def test_linear_interpolation_in_sigma():
    pts = [(0.875, 0.125), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75)]  # a = 1 - s at the old cached steps
    assert interpolate(pts, 11 / 16) == 5 / 16 and interpolate(pts, 0.75) == 0.25
    assert interpolate(pts, 15 / 16) == 0.125 and interpolate(pts, 3 / 16) == 0.75  # the end values outside
    assert interpolate([(0.5, [1.0, 2.0]), (0.25, [2.0, 0.0])], 0.375) == [1.5, 1.0]
    t = interpolate([(0.5, torch.tensor([1.0, 2.0])), (0.25, torch.tensor([2.0, 0.0]))], 0.3125)
    assert torch.equal(t, torch.tensor([1.75, 0.5]))


def test_stream_ranges_follow_sigma():
    # experts: high runs steps 0-3 (sigma 1 .. 5/8), low 4-7; at T'=4 the steps whose nearest old step is theirs
    assert stream_ranges({"high/cond": [0, 3], "low/cond": [4, 7]}, linear(8), linear(4), 4) == \
        {"high/cond": [0, 1], "low/cond": [2, 3]}


def test_transfer_plan_steps_nfe_and_coefficients():
    scalar = {"cond": {"1": [0.125, 0.0], "2": [0.25, 1.0], "4": [0.5, 2.0], "6": [0.75, 3.0]}}
    plan = toy_plan(rectify={"enabled": True, "form": "linear", "granularity": "scalar", "scalar": scalar},
                    predictor={"kind": "extrapolate", "order": 1, "abscissa": "sigma",
                               "c": {"cond": {"1": 0.5, "2": 1.0, "4": 1.0, "6": 0.0}}},
                    adjusted_sigmas=[1.0] + [0.9 - k / 10 for k in range(7)] + [0.0])
    up = transfer_plan(plan, linear(16))
    assert up.steps == 16 and up.cached_steps == {"cond": [1, 2, 4, 5, 7, 9, 11, 13]} and up.nfe == 8
    assert up.base_sigmas == linear(16) and up.adjusted_sigmas is None and up.settings["steps"] == 16
    assert up.transferred["from_steps"] == 8 and up.transferred["from_nfe"] == 4
    assert up.rectify["scalar"]["cond"]["5"] == [5 / 16, 1.25] and up.rectify["scalar"]["cond"]["13"] == [0.75, 3.0]
    assert up.predictor["c"]["cond"]["11"] == 0.25 and set(up.predictor["c"]["cond"]) == {str(k) for k in
                                                                                         up.cached_steps["cond"]}
    down = transfer_plan(plan, linear(4))
    assert down.cached_steps == {"cond": [1, 2]} and down.nfe == 2
    assert transfer_plan(plan, linear(16), nfe=6).nfe == 6 and transfer_plan(plan, linear(16), nfe_share=0.75).nfe == 12
    same = transfer_plan(plan, linear(8))  # at its own T the rule gives back the plan's steps
    assert same.cached_steps == plan.cached_steps and same.rectify["scalar"] == scalar


def test_transfer_per_channel_tensors_and_refusals():
    plan = toy_plan(rectify={"enabled": True, "form": "linear", "granularity": "channel", "scalar": {}})
    plan.tensors = {f"cond.{k}.{ab}": torch.full((4,), float(k) / 8 * (1 if ab == "a" else 2))
                    for k in (1, 2, 4, 6) for ab in "ab"}
    up = transfer_plan(plan, linear(16))
    assert sorted(up.tensors) == sorted(f"cond.{k}.{ab}" for k in up.cached_steps["cond"] for ab in "ab")
    assert torch.equal(up.tensors["cond.5.a"], torch.full((4,), 5 / 16 * 1.0))  # between steps 2 and 4 at T=8
    with pytest.raises(PlanMismatch, match="steps 8, this run has 16.*sigmas"):
        transfer_plan(toy_plan().copy(base_sigmas=[]), linear(16))
    no_zero = transfer_plan(toy_plan(), linear(16)[:-1], steps=16)  # sigmas without the final 0: steps given
    assert no_zero.steps == 16 and no_zero.cached_steps == transfer_plan(toy_plan(), linear(16)).cached_steps
    with pytest.raises(PlanMismatch, match="only with sigmas on both sides"):
        transfer_plan(toy_plan(), [], steps=16)
    with pytest.raises(PlanMismatch, match="nfe 40 cannot be met at steps 16"):
        transfer_plan(toy_plan(), linear(16), nfe=40)


def test_transfer_expert_streams():
    """Wan2.2's experts: each stream keeps its sigma range; its first step and the last step stay computed."""
    plan = toy_plan(cached=()).copy(branches=["high/cond", "low/cond"], cached_steps={"high/cond": [1, 2],
                                    "low/cond": [5, 6]}, streams={"high/cond": [0, 3], "low/cond": [4, 7]})
    up = transfer_plan(plan, linear(16))
    assert up.streams == {"high/cond": [0, 7], "low/cond": [8, 15]}  # 9/16 is as near 5/8 as 1/2: the earlier
    assert up.cached_steps == {"high/cond": [2, 4, 5, 7], "low/cond": [9, 10, 12, 13]} and up.nfe == 8
    assert up.calls("high/cond") == up.calls("low/cond") == 8
    # at 32 steps the last step's sigma 1/32 is nearer the final 0 than old step 7's 1/8: still the low stream's
    assert transfer_plan(plan, linear(32)).streams == {"high/cond": [0, 14], "low/cond": [15, 31]}  # 18/32: a tie
    # the pipeline's own switch step (Wan2.2's boundary_ratio) when known
    assert transfer_plan(plan, linear(16), split=5).streams == {"high/cond": [0, 4], "low/cond": [5, 15]}
    with pytest.raises(PlanMismatch, match="boundary falls at step 16 of 16"):
        transfer_plan(plan, linear(16), split=16)


def test_transfer_under_compile_is_the_eager_result_without_recompiling(tiny_flux, monkeypatch):
    """The transfer is decided in the hooks' eager code: with compiled blocks, calls at 8, 12, 6 and 8 steps give
    the uncompiled outputs bit for bit and compile nothing after the first call."""
    import ertacli
    from ertacli.engine import hooks

    loaded, _ = tiny_flux
    pipe = loaded.pipe

    def call(T):
        return pipe(num_inference_steps=T, height=32, width=32, guidance_scale=3.5, output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(0),
                    **loaded.encoder.pipeline_kwargs(["a red circle"], "")).images

    call(8)
    plan = toy_plan(cached=(2, 3, 5)).copy(base_sigmas=[float(s) for s in pipe.scheduler.sigmas], sample_shape={},
                                           predictor={"kind": "extrapolate", "order": 1, "abscissa": "sigma", "c": 1.0})
    steps = (8, 12, 6, 8)
    with ertacli.cached(pipe, plan):
        eager = [(call(T), ertacli.last_call_stats(pipe)["nfe"]) for T in steps]
    monkeypatch.setenv("ERTACACHE_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    hooks._COMPILED.clear()
    try:
        with ertacli.cached(pipe, plan, compile=True):
            compiled = [(call(steps[0]), ertacli.last_call_stats(pipe)["nfe"])]
            torch._dynamo.config.error_on_recompile = True
            compiled += [(call(T), ertacli.last_call_stats(pipe)["nfe"]) for T in steps[1:]]
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
        hooks._COMPILED.clear()
    assert [n for _, n in eager] == [n for _, n in compiled] == [5, 8, 4, 5]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(eager, compiled))
    assert torch.equal(eager[0][0], eager[3][0])


def test_transfer_on_wan22_experts(monkeypatch):
    """Wan2.2's two experts (streams with step ranges) at another step count: each stream runs the transferred
    plan's calls (the boundary step lands in the stream the sigma rule gives it)."""
    import ertacli
    from ertacli.backbones import tiny_zoo
    from ertacli.transfer import expert_split

    t = tiny_zoo.build("wan2.2-moe")
    for module, attr, value in t.patches:
        monkeypatch.setattr(module, attr, value)

    def run(T):
        kwargs = {**t.call, **t.encode(["a red fox"]), "num_inference_steps": T}
        with torch.no_grad():
            out = t.pipe(generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False, **kwargs)
        return out[0]

    T = t.call["num_inference_steps"]
    plan = ertacli.calibrate(t.pipe, ["a red fox", "a blue bird"], seeds=(0,), prompt_encoder=t.encode, holdout=0.5,
                             nfe=T, quiet=True, **t.call)
    try:
        for T2 in (2 * T, T + 3):
            run(T2)
            sigmas, split = [float(s) for s in t.pipe.scheduler.sigmas], expert_split(t.pipe, t.pipe.scheduler)
            moved = transfer_plan(plan, sigmas, split=split)
            assert moved.streams["low/cond"] == [split, T2 - 1] and moved.streams["high/uncond"] == [0, split - 1]
            ertacli.enable_cache(t.pipe, plan)
            out = run(T2)
            stats = ertacli.last_call_stats(t.pipe)
            assert stats["transferred"] and stats["nfe"] == moved.nfe and torch.isfinite(out).all()
            assert stats["nfe_per_branch"] == {b: moved.calls(b) - len(moved.cached_steps[b]) for b in moved.branches}
            ertacli.disable_cache(t.pipe)
    finally:
        ertacli.disable_cache(t.pipe)
