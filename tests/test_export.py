"""Plan export to cache-dit's steps_computation_mask: toy arithmetic, the multi-branch rule, errors, and a load
into cache-dit's own config (in a subprocess with a time limit, skipped with the reason when cache-dit is absent)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ertacli.errors import UserError
from ertacli.export import cache_dit_mask, export_plan, load_into_cache_dit, read_export, write_export
from ertacli.plan import Plan

IMPORT_LIMIT_S = 180  # `import cache_dit` takes ~5-7 s here (torch + diffusers); a hang is skipped, not waited on


def toy_plan(cached: dict[str, list[int]], T: int = 8, **kw) -> Plan:
    """A hand-built plan with the given cached steps per branch."""
    return Plan(recipe="toy", recipe_key="k", model_id="m:toy", steps=T, scheduler={}, residual="hidden",
                base_sigmas=[1.0 - i / T for i in range(T)], branches=list(cached), cached_steps=cached,
                sample_shape={}, calibration={}, **kw)


def test_single_branch_mask():
    out = cache_dit_mask(toy_plan({"cond": [2, 3, 5]}))
    assert out["format"] == "cache-dit" and out["num_inference_steps"] == 8
    assert out["steps_computation_mask"] == [1, 1, 0, 0, 1, 0, 1, 1]
    assert out["branch"] == "cond"
    assert out["cache_config"]["steps_computation_mask"] == out["steps_computation_mask"]
    assert out["cache_config"]["steps_computation_policy"] == "static"
    assert out["cache_config"]["enable_separate_cfg"] is False
    assert out["source_plan"]["cached_steps"] == {"cond": [2, 3, 5]}


def test_multi_branch_intersection_and_named_branch():
    plan = toy_plan({"cond": [2, 3, 5], "uncond": [3, 4, 5, 6]})
    out = cache_dit_mask(plan)
    assert out["steps_computation_mask"] == [1, 1, 1, 0, 1, 0, 1, 1]  # cached only where both branches cache: 3, 5
    assert out["branch"] == "intersection(cond,uncond)"
    assert out["cache_config"]["enable_separate_cfg"] is True
    lost = [s for s in out["does_not_carry_over"] if "computed in the export" in s]
    assert lost == ["branch cond caches steps [2] in the plan; computed in the export (intersection(cond,uncond))",
                    "branch uncond caches steps [4, 6] in the plan; computed in the export (intersection(cond,uncond))"]
    named = cache_dit_mask(plan, branch="uncond")
    assert named["steps_computation_mask"] == [1, 1, 1, 0, 0, 0, 0, 1]
    assert any("branch cond computes steps [4, 6]" in s for s in named["does_not_carry_over"])
    with pytest.raises(UserError, match="--branch neg: the plan has branches cond, uncond"):
        cache_dit_mask(plan, branch="neg")


def test_does_not_carry_over_lists_fit_parts():
    plan = toy_plan({"cond": [2]}, predictor={"kind": "linear", "c": 0.5}, adjusted_sigmas=[0.9] * 8,
                    rectify={"enabled": True, "granularity": "channel"})
    text = " | ".join(cache_dit_mask(plan)["does_not_carry_over"])
    assert 'predictor linear {"c": 0.5}' in text and "adjusted_sigmas" in text and "rectification (channel" in text
    bare = " | ".join(cache_dit_mask(toy_plan({"cond": [2]}))["does_not_carry_over"])
    assert "adjusted_sigmas" not in bare and "rectification" not in bare


def test_a_plan_caching_the_final_step_exports_it():
    """T-1 is a plan's choice (SPEC "Residual cache"); cache-dit reads mask 0 at the last step as a static cache."""
    out = cache_dit_mask(toy_plan({"cond": [2, 5, 7]}))
    assert out["steps_computation_mask"] == [1, 1, 0, 1, 1, 0, 1, 0]
    assert "cached steps [2, 5, 7] of 8" in out["carries_over"][0]


def test_bad_input_errors(tmp_path):
    plan = toy_plan({"cond": [2]})
    with pytest.raises(UserError, match="--to teacache: unknown export target; choose one of cache-dit") as e:
        export_plan(plan, "teacache")
    assert "\n" not in e.value.message
    with pytest.raises(UserError, match=r"caches steps \[0, 8\]; it can cache steps 1..7"):
        cache_dit_mask(toy_plan({"cond": [0, 3, 7, 8]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cache_dit_mask(plan), "steps_computation_mask": [1, 0, 1]}))
    with pytest.raises(UserError, match="must be 8 entries of 0/1"):
        read_export(bad)
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a readable cache-dit export"):
        load_into_cache_dit(bad)


def test_write_export_round_trip(tmp_path):
    p = write_export(toy_plan({"cond": [2, 3, 5]}), tmp_path / "sub" / "mask.json", source="runs/x/plan")
    data = read_export(p)
    assert data["steps_computation_mask"] == [1, 1, 0, 0, 1, 0, 1, 1]
    assert data["source_plan"]["path"] == "runs/x/plan"


# Run in a child: loads the file with our loader and with cache-dit's own, steps cache-dit's context through
# 8 denoising steps x 2 transformer calls (cond, uncond) recording which calls it would serve from cache, then
# runs tiny-wan (2 blocks) under cache_dit.enable_cache and counts calls of the first and the last block.
CHILD = textwrap.dedent("""
    import json, sys, torch
    import cache_dit
    from cache_dit.caching.cache_contexts.cache_manager import CachedContextManager
    from ertacli.export import load_into_cache_dit
    cfg = load_into_cache_dit(sys.argv[1])
    theirs, _ = cache_dit.load_cache_config(sys.argv[1])
    m = CachedContextManager(name="probe")
    m.set_context(m.new_context(name="t", cache_config=cfg))
    calls = []
    for _ in range(2 * cfg.num_inference_steps):
        m.mark_step_begin()
        calls.append([m.get_current_step(), int(m.can_cache(torch.zeros(1)))])
    torch.set_num_threads(1)
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe
    loaded = load_pipeline(resolve_recipe("tiny-wan-random", ["sampling.steps=8"]), "cpu")
    pipe = loaded.pipe
    cache_dit.enable_cache(pipe, cache_config=load_into_cache_dit(sys.argv[1]))
    blocks = pipe.transformer.blocks
    ran = {"first": 0, "last": 0}
    blocks[0].register_forward_hook(lambda *a: ran.__setitem__("first", ran["first"] + 1))
    blocks[-1].register_forward_hook(lambda *a: ran.__setitem__("last", ran["last"] + 1))
    pipe(**loaded.encoder.pipeline_kwargs(["a red circle"], "blurry"), num_inference_steps=8, height=32, width=32,
         num_frames=5, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="latent")
    print(json.dumps({"blocks": len(blocks), "ran": ran, "type": type(cfg).__name__, "mask": cfg.steps_computation_mask,
                      "policy": cfg.steps_computation_policy, "theirs": theirs.steps_computation_mask,
                      "theirs_policy": theirs.steps_computation_policy, "calls": calls}))
""")


def test_loads_into_cache_dit_config(tmp_path):
    if importlib.util.find_spec("cache_dit") is None:
        pytest.skip("cache-dit is not installed (pip install 'ertacache[peers]')")
    p = write_export(toy_plan({"cond": [2, 3, 5], "uncond": [2, 3, 5]}), tmp_path / "mask.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(d for d in sys.path if d), "HF_HUB_OFFLINE": "1"}
    try:
        run = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True, env=env,
                             timeout=IMPORT_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`import cache_dit` did not finish in {IMPORT_LIMIT_S} s on this machine (slow disk or import hang)")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    mask = [1, 1, 0, 0, 1, 0, 1, 1]
    assert got["type"] == "DBCacheConfig" and got["mask"] == mask and got["theirs"] == mask
    assert got["policy"] == got["theirs_policy"] == "static"
    # both calls of denoising step k (cond, then uncond) are served from cache exactly when mask[k] == 0
    assert got["calls"] == [[k, 1 - mask[k]] for k in range(8) for _ in range(2)]
    # in the real Wan pipeline: block 0 (Fn_compute_blocks=1) runs on all 8 x 2 calls, the last only on computed steps
    assert got["blocks"] == 2 and got["ran"] == {"first": 16, "last": 2 * (8 - 3)}
