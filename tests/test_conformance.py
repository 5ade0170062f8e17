"""Conformance of diffusers DiT families through the public API only (issue 22 point 6).

Per family (tiny random pipeline from ertacli.backbones.tiny_zoo, prompts as prompt_embeds, no download):
hooks on with nothing cached equal the uncached output bitwise; calibrate(lam=0) runs uncached;
calibrate(nfe=about half) -> enable_cache -> counted NFE equals the plan's, below the uncached count, finite
output; three consecutive cached calls give the same output and NFE; disable_cache restores bitwise;
plan.save / load_plan round trip.
"""

from __future__ import annotations

import pytest
import torch

import ertacli
from ertacli.backbones import tiny_zoo

PROMPTS = ["a red fox", "a blue bird"]
UNSUPPORTED: dict[str, str] = {}  # family -> why it fails (an expected failure until fixed)
# Streams each family's call runs: cache_context names, else one stream per call position in a step.
BRANCHES = {"flux": ["cond"], "wan2.1-t2v": ["cond", "uncond"], "sd3": ["cond_uncond"],
            "chroma": ["cond_uncond", "call1"], "lumina2": ["cond_uncond", "call1"], "cogview4": ["cond", "uncond"],
            "sana": ["cond_uncond"], "qwen-image-edit": ["cond"], "wan2.1-i2v": ["cond", "uncond"]}
FAMILIES = [pytest.param(f, marks=pytest.mark.xfail(reason=UNSUPPORTED[f], strict=True)) if f in UNSUPPORTED else f
            for f in tiny_zoo.FAMILIES if f != "wan2.2-moe"]


def _run(tiny, **extra):
    kwargs = {**tiny.call, **tiny.encode(PROMPTS[:1]), **extra}
    with torch.no_grad():
        out = tiny.pipe(generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False, **kwargs)
    return out[0].detach().float()


def _calibrate(tiny, **target):
    return ertacli.calibrate(tiny.pipe, PROMPTS, seeds=(0,), prompt_encoder=tiny.encode, holdout=0.5, **target,
                             **tiny.call)


@pytest.fixture
def tiny(request, monkeypatch):
    t = tiny_zoo.build(request.param)
    for module, attr, value in t.patches:
        monkeypatch.setattr(module, attr, value)
    yield t
    ertacli.disable_cache(t.pipe)


@pytest.mark.parametrize("tiny", FAMILIES, indirect=True)
def test_family(tiny, tmp_path, request):
    family = request.node.callspec.params["tiny"]
    ref = _run(tiny)
    steps = tiny.call["num_inference_steps"]

    plan0 = _calibrate(tiny, lam=0.0)  # calibrate(lam=0) caches nothing
    assert plan0.n_cached == 0 and plan0.nfe == steps * len(plan0.branches)
    assert plan0.branches == BRANCHES.get(family, plan0.branches)
    ertacli.enable_cache(tiny.pipe, plan0)
    assert torch.equal(_run(tiny), ref), "hooks on, nothing cached: output differs from uncached"
    uncached_nfe = ertacli.last_call_stats(tiny.pipe)["nfe"]
    assert uncached_nfe == plan0.nfe
    ertacli.disable_cache(tiny.pipe)

    half = uncached_nfe // 2
    plan = _calibrate(tiny, nfe=half)
    assert plan.nfe == half, f"calibrate(nfe={half}) made a plan with NFE {plan.nfe}"
    ertacli.enable_cache(tiny.pipe, plan)
    out = _run(tiny)
    stats = ertacli.last_call_stats(tiny.pipe)
    assert stats["nfe"] == plan.nfe < uncached_nfe
    assert torch.isfinite(out).all()

    for _ in range(2):  # calls two and three
        assert torch.equal(_run(tiny), out)
        assert ertacli.last_call_stats(tiny.pipe)["nfe"] == plan.nfe

    plan.save(tmp_path / "plan")
    loaded = ertacli.load_plan(tmp_path / "plan")
    assert loaded.cached_steps == plan.cached_steps and loaded.branches == plan.branches
    ertacli.enable_cache(tiny.pipe, loaded)
    assert torch.equal(_run(tiny), out)

    ertacli.disable_cache(tiny.pipe)
    assert torch.equal(_run(tiny), ref), "disable_cache did not restore the uncached output"


@pytest.mark.parametrize("tiny", ["wan2.2-moe"], indirect=True)
def test_wan22_moe(tiny, tmp_path):
    """Both experts hooked, each (expert, branch) its own stream; calibrate(nfe=N) reaches N on both together."""
    ref = _run(tiny)
    steps = tiny.call["num_inference_steps"]
    plan0 = _calibrate(tiny, lam=0.0)
    assert sorted(plan0.branches) == ["high/cond", "high/uncond", "low/cond", "low/uncond"]
    first_low = plan0.streams["low/cond"][0]
    assert plan0.streams["high/cond"] == [0, first_low - 1] and plan0.streams["low/cond"] == [first_low, steps - 1]
    ertacli.enable_cache(tiny.pipe, plan0)
    assert torch.equal(_run(tiny), ref)
    stats = ertacli.last_call_stats(tiny.pipe)
    assert stats["nfe"] == plan0.nfe == 2 * steps
    assert stats["nfe_per_branch"]["low/cond"] == steps - first_low

    plan = _calibrate(tiny, nfe=steps)
    assert plan.nfe == steps
    ertacli.enable_cache(tiny.pipe, plan)
    for _ in range(2):
        out = _run(tiny)
        stats = ertacli.last_call_stats(tiny.pipe)
        assert stats["nfe"] == steps and torch.isfinite(out).all()
    assert {b.split("/")[0] for b, n in stats["cached_per_branch"].items() if n} <= {"high", "low"}
    plan.save(tmp_path / "plan")
    assert ertacli.load_plan(tmp_path / "plan").nfe == steps
    ertacli.disable_cache(tiny.pipe)
    assert torch.equal(_run(tiny), ref)


@pytest.mark.parametrize("tiny", ["wan2.2-moe"], indirect=True)
def test_wan22_moe_checks_every_stream(tiny):
    """The plan check runs at each stream's own first call: the low-noise expert's streams (first call at a later
    step) are checked too, so a plan whose low-expert stream mismatches is refused, not run half-checked."""
    from dataclasses import replace

    plan0 = _calibrate(tiny, lam=0.0)
    first_low = plan0.streams["low/cond"][0]
    assert first_low > 0
    calls = {"high": 0, "low": 0}
    for name, attr in (("high", "transformer"), ("low", "transformer_2")):
        getattr(tiny.pipe, attr).register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    shape = plan0.sample_shape["low/uncond"]
    wrong = [shape[0]] + [2 * n for n in shape[1:]]
    bad_shape = replace(plan0, sample_shape={**plan0.sample_shape, "low/uncond": wrong})
    ertacli.enable_cache(tiny.pipe, bad_shape)
    with pytest.raises(ertacli.PlanMismatch, match="size|height|width|frames"):
        _run(tiny)
    assert calls == {"high": 2 * first_low, "low": 2}  # refused at low/uncond's first call, the expert's second
    keep = [b for b in plan0.branches if b != "low/uncond"]
    no_low_uncond = replace(plan0, branches=keep, cached_steps={b: plan0.cached_steps.get(b, []) for b in keep},
                            sample_shape={b: plan0.sample_shape[b] for b in keep},
                            streams={b: plan0.streams[b] for b in keep})
    ertacli.enable_cache(tiny.pipe, no_low_uncond)
    with pytest.raises(ertacli.PlanMismatch, match="this call runs branch 'low/uncond'"):
        _run(tiny)
    ertacli.enable_cache(tiny.pipe, plan0)  # the plan as made runs
    _run(tiny)
    assert ertacli.last_call_stats(tiny.pipe)["nfe"] == plan0.nfe
    # the experts switch a step later than the plan says (another boundary_ratio): refused at low/cond's first call
    sigmas = tiny.pipe.scheduler.sigmas
    tiny.pipe.register_to_config(boundary_ratio=float(sigmas[first_low] + sigmas[first_low + 1]) / 2)
    with pytest.raises(ertacli.PlanMismatch, match=rf"stream 'low/cond' from step {first_low}, this call from "
                                                   rf"step {first_low + 1}"):
        _run(tiny)


class OtherExpert(torch.nn.Module):
    """A denoiser of another class than `transformer`: the engine cannot hook it as an expert."""


def test_unhookable_denoiser_refused():
    """A pipeline holding a denoiser the engine cannot hook is refused in one line, never run half-cached."""
    t = tiny_zoo.build("wan2.2-moe")
    t.pipe.transformer_2 = OtherExpert()
    with pytest.raises(ertacli.UserError, match=r"WanPipeline holds more denoisers .*transformer_2.*refuses"):
        _calibrate(t, lam=0.1)


def test_export_counts_each_experts_steps():
    """cache-dit export of an expert plan: a step is cached when every stream running at that step caches it."""
    from ertacli.export import export_plan
    from ertacli.plan import Plan

    plan = Plan(recipe="t", recipe_key="k", model_id="WanPipeline:x", steps=8, scheduler={}, residual="hidden",
                base_sigmas=[], branches=["high/cond", "high/uncond", "low/cond", "low/uncond"],
                cached_steps={"high/cond": [1, 2], "high/uncond": [2], "low/cond": [5, 6], "low/uncond": [5, 6]},
                sample_shape={}, calibration={}, streams={"high/cond": [0, 3], "high/uncond": [0, 3],
                                                          "low/cond": [4, 7], "low/uncond": [4, 7]})
    data = export_plan(plan, "cache-dit")
    assert data["steps_computation_mask"] == [1, 1, 0, 1, 1, 0, 0, 1]
    assert data["cache_config"]["enable_separate_cfg"] is True
    assert plan.nfe == 16 - 7 and not any("low/cond computes" in line for line in data["does_not_carry_over"])
