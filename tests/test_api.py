"""The public API on pipelines the test builds itself: the README's lines, calibrate, PlanMismatch, repeated calls."""

from __future__ import annotations

import contextlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ertacli
from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
SEVEN = "a handwritten seven"


def runs(results: Path, recipe: str, command: str) -> list[Path]:
    return sorted(p for p in (results / recipe).iterdir() if p.name.startswith(f"{command}-"))


@contextlib.contextmanager
def isolated(tmp_path_factory, name: str):
    """A module-scoped results folder and working directory: (monkeypatch, root)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp(name)
    mp.setenv("ERTACACHE_RESULTS", str(root / "results"))
    mp.chdir(root)
    try:
        yield mp, root
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def flux_cli(tmp_path_factory):
    """`ertacache search --lambda 0.15` + `fit` + `generate --plan` on tiny-flux, run through the CLI."""
    capsys = _Capture()
    with isolated(tmp_path_factory, "api") as (mp, root):
        assert cli(mp, capsys, "search", "-m", "tiny-flux", "--lambda", "0.15", "--method", "ertacache-x1", "-q")[0] == 0
        (search,) = runs(root / "results", "tiny-flux", "search")
        plan_dir = search / "plans" / "lambda-0.15"
        code, _, err = cli(mp, capsys, "fit", "-m", "tiny-flux", "--plan", str(plan_dir), "--method", "ertacache-x1",
                           "-q")
        assert code == 0, err
        (fit,) = runs(root / "results", "tiny-flux", "fit")
        code, _, err = cli(mp, capsys, "generate", "-m", "tiny-flux", "--plan", str(fit / "plan"), "--prompt", SEVEN,
                           "--seed", "0", "-q")
        assert code == 0, err
        (gen,) = runs(root / "results", "tiny-flux", "generate")
        yield {"search": plan_dir, "fit": fit / "plan", "generate": gen}


class _Capture:
    """A stand-in for pytest's capsys in a module fixture."""

    def readouterr(self):
        return type("Out", (), {"out": "", "err": ""})()


def flux_pipe():
    """The tiny FLUX as a user loads it: from_pretrained, no text encoder (prompts embedded with MiniLM)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(ROOT / "models" / "tiny-flux"), text_encoder=None, tokenizer=None,
                                        text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_readme_lines_equal_generate_bitwise(flux_cli):
    """The README's few lines on a user-built FluxPipeline give generate --plan's output, bit for bit."""
    pipe = flux_pipe()
    embeds = ertacli.minilm_encoder("flux")([SEVEN])
    plan = ertacli.load_plan(flux_cli["fit"])
    ertacli.enable_cache(pipe, plan)
    call = dict(num_inference_steps=plan.steps, height=16, width=16, guidance_scale=3.5, **embeds)
    image = pipe(generator=torch.Generator("cpu").manual_seed(0), output_type="pt", **call).images
    nfe = ertacli.last_call_stats(pipe)["nfe"]
    latents = pipe(generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **call).images
    ertacli.disable_cache(pipe)
    gen = flux_cli["generate"]
    png = np.asarray(Image.open(gen / "samples" / "000.png").convert("RGB"))
    from ertacli.runs.media import to_uint8

    assert np.array_equal(to_uint8(image[0]), png)
    assert torch.equal(latents[0], load_file(str(gen / "latents.safetensors"))["sample.0"])
    row = json.loads((gen / "records" / "000.json").read_text())
    assert nfe == row["nfe"] == plan.nfe < plan.steps
    uncached = pipe(generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **call).images
    assert not torch.equal(uncached, latents)  # disable_cache really removed it


def test_calibrate_equals_cli_search_and_fit(flux_cli):
    """ertacli.calibrate on the recipe's calibration prompts = `ertacache search` + `fit` on the same settings."""
    from ertacli.recipe import read_prompt_file

    prompts = read_prompt_file(ROOT / "prompts" / "tiny-calibration.txt")
    plan = ertacli.calibrate(flux_pipe(), prompts, seeds=[0, 1], lam=0.15, method="ertacache-x1",
                             prompt_encoder=ertacli.minilm_encoder("flux"), num_inference_steps=20, height=16,
                             width=16, guidance_scale=3.5)
    cli_plan = ertacli.load_plan(flux_cli["fit"])
    assert plan.cached_steps == cli_plan.cached_steps and plan.n_cached > 0
    assert plan.predictor == cli_plan.predictor
    assert plan.rectify == cli_plan.rectify and plan.adjusted_sigmas == cli_plan.adjusted_sigmas
    assert plan.fit["decision"] == cli_plan.fit["decision"]
    assert [c["holdout_mse"] for c in plan.fit["candidates"]] == [c["holdout_mse"] for c in cli_plan.fit["candidates"]]


@pytest.fixture(scope="module")
def random_plan(tmp_path_factory):
    """A searched plan on tiny-flux-random (8 steps), and that recipe's pipeline as a user would hold it."""
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    with isolated(tmp_path_factory, "mismatch") as (mp, root):
        sets = ["--set", "sampling.steps=8", "-q"]
        assert cli(mp, _Capture(), "search", "-m", "tiny-flux-random", "--lambda", "0.5", *sets)[0] == 0
        (search,) = runs(root / "results", "tiny-flux-random", "search")
        recipe = resolve_recipe("tiny-flux-random", ["sampling.steps=8"])
        loaded = load_pipeline(recipe, "cpu")
        yield ertacli.load_plan(search / "plans" / "lambda-0.5"), loaded


def call_kwargs(loaded, steps=8, size=32):
    return dict(num_inference_steps=steps, height=size, width=size, guidance_scale=3.5, output_type="latent",
                generator=torch.Generator("cpu").manual_seed(0),
                **loaded.encoder.pipeline_kwargs(["a red circle"], ""))


@pytest.mark.parametrize("change, field", [({"steps": 6}, "steps 8, this run has 6"),
                                           ({"size": 16}, "height/width 32x32")],
                         ids=["steps-no-sigmas", "shape"])
def test_plan_mismatch_names_the_field(random_plan, change, field):
    plan, loaded = random_plan
    if "steps" in change:
        plan = plan.copy(base_sigmas=[])  # another step count is transferred, but only on sigmas
    with ertacli.cached(loaded.pipe, plan):
        with pytest.raises(ertacli.PlanMismatch) as info:
            loaded.pipe(**call_kwargs(loaded, **change))
        msg = str(info.value)
        assert field in msg and "re-run" in msg and "\n" not in msg and msg.count(": ") <= 2
        out = loaded.pipe(**call_kwargs(loaded))  # the failed call left no state behind
        assert ertacli.last_call_stats(loaded.pipe)["nfe"] == plan.nfe and out.images.shape[0] == 1


def test_step_count_transfer(random_plan):
    """A plan made at T=8 (with adjusted sigmas, scalar a/b and gains) used at T'=12 and 6: the call runs the plan
    transferred (ertacli.transfer) with its NFE, finite output; back at 8 the plan itself runs, bitwise as before."""
    from ertacli.transfer import transfer_plan

    searched, loaded = random_plan
    pipe, ks = loaded.pipe, sorted(searched.cached_steps["cond"])
    plan = searched.copy(adjusted_sigmas=[s * (0.97 if 0 < i < 8 else 1.0) for i, s in enumerate(searched.base_sigmas)],
                         rectify={"enabled": True, "form": "linear", "granularity": "scalar",
                                  "scalar": {"cond": {str(k): [0.01 * k, -0.001 * k] for k in ks}}},
                         predictor={"kind": "extrapolate", "order": 1, "abscissa": "sigma",
                                    "c": {"cond": {str(ks[-1]): 0.5}}})
    sigmas = {}
    for T in (12, 6):
        pipe(**call_kwargs(loaded, steps=T))
        sigmas[T] = [float(x) for x in pipe.scheduler.sigmas]
    with ertacli.cached(pipe, plan):
        first = pipe(**call_kwargs(loaded)).images
        assert ertacli.last_call_stats(pipe) == {"nfe": plan.nfe, "cached": plan.n_cached, "steps": 8,
                                                 "nfe_per_branch": {"cond": plan.nfe}, "calibrated_steps": 8,
                                                 "cached_per_branch": {"cond": plan.n_cached}, "transferred": False,
                                                 "plan_nfe": plan.nfe}
        for T in (12, 6):
            out = pipe(**call_kwargs(loaded, steps=T)).images
            stats, moved = ertacli.last_call_stats(pipe), transfer_plan(plan, sigmas[T])
            assert moved.nfe == round(T * plan.nfe / 8) and moved.cached_steps != plan.cached_steps
            assert stats["transferred"] and stats["steps"] == T and stats["calibrated_steps"] == 8
            assert stats["nfe"] == stats["plan_nfe"] == moved.nfe and stats["cached"] == T - moved.nfe
            assert torch.isfinite(out).all()
        again = pipe(**call_kwargs(loaded)).images
        assert not ertacli.last_call_stats(pipe)["transferred"] and torch.equal(again, first)
    with ertacli.cached(pipe, plan, nfe=3):  # a target NFE, at the plan's own step count too
        pipe(**call_kwargs(loaded))
        stats = ertacli.last_call_stats(pipe)
        assert stats["nfe"] == 3 and stats["transferred"] and stats["steps"] == 8


def test_generate_transfers_a_plan_to_another_step_count(random_plan, results, capsys, monkeypatch):
    """`generate --set sampling.steps=12` with a plan made at 8 runs it transferred (no PlanMismatch) and says so."""
    plan, _ = random_plan
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan", str(plan.folder),
                       "--prompt", "a red circle", "--seed", "0", "--set", "sampling.steps=12", "-q")
    assert code == 0, err
    (gen,) = runs(results, "tiny-flux-random", "generate")
    info = json.loads((gen / "generate.json").read_text())
    record = json.loads((gen / "records" / "000.json").read_text())
    assert info["transferred"] and info["steps"] == 12 and info["calibrated_steps"] == 8
    assert info["settings"]["steps"] == 12
    assert record["nfe"] == info["plan_nfe"] == round(12 * plan.nfe / 8)


def test_plan_mismatch_for_another_model(random_plan, tiny_wan):
    plan, _ = random_plan
    loaded, recipe = tiny_wan
    kwargs = dict(num_inference_steps=8, height=16, width=16, num_frames=5, guidance_scale=4.0, output_type="latent",
                  **loaded.encoder.pipeline_kwargs(["a red circle"], ""))
    with ertacli.cached(loaded.pipe, plan, backbone="WanPipeline"):
        with pytest.raises(ertacli.PlanMismatch) as info:
            loaded.pipe(**kwargs)
    msg = str(info.value)
    assert "model class FluxTransformer2DModel, this run has WanTransformer3DModel" in msg and "re-run" in msg


def test_twenty_calls_report_the_same_nfe(tiny_wan):
    """Two branches, a plan enabled once, 20 pipe(...) calls with no reset in between: the same NFE each call."""
    from ertacli.plan import Plan

    loaded, recipe = tiny_wan
    T = recipe.sampling.steps
    plan = Plan(recipe="t", recipe_key="k", model_id="m", steps=T, scheduler={}, residual="hidden", base_sigmas=[],
                branches=["cond", "uncond"], cached_steps={"cond": [2, 3], "uncond": [3]}, sample_shape={},
                calibration={})
    kwargs = dict(num_inference_steps=T, height=16, width=16, num_frames=5, guidance_scale=4.0, output_type="latent",
                  **loaded.encoder.pipeline_kwargs(["a red circle"], ""))
    seen = []
    with ertacli.cached(loaded.pipe, plan):
        for _ in range(20):
            loaded.pipe(**kwargs)
            seen.append(ertacli.last_call_stats(loaded.pipe))
    assert all(s == seen[0] for s in seen)
    assert seen[0]["nfe_per_branch"] == {"cond": T - 2, "uncond": T - 1} and seen[0]["nfe"] == plan.nfe
    assert seen[0]["cached_per_branch"] == {"cond": 2, "uncond": 1}
    with pytest.raises(ertacli.UserError):
        ertacli.last_call_stats(loaded.pipe)  # disabled after the block


def test_wan_example_script_equals_generate(results, monkeypatch, capsys):
    """examples/use_plan_wan.py (a user's own WanPipeline, two branches, adjusted sigmas) = generate --plan."""
    sets = ["--set", "sampling.steps=10", "--set", "calibration.seeds=[0]", "-q"]
    assert cli(monkeypatch, capsys, "search", "-m", "tiny-wan", "--lambda", "0.1", *sets)[0] == 0
    (search,) = runs(results, "tiny-wan", "search")
    code, _, err = cli(monkeypatch, capsys, "fit", "-m", "tiny-wan", "--plan", str(search / "plans" / "lambda-0.1"),
                       "--adjust", "on", "--rectify", "on", "--gain", "off", *sets)
    assert code == 0, err
    (fit,) = runs(results, "tiny-wan", "fit")
    prompt = "the digit 3 drifting left"
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-wan", "--plan", str(fit / "plan"), "--prompt",
                       prompt, "--seed", "0", *sets)
    assert code == 0, err
    (gen,) = runs(results, "tiny-wan", "generate")
    out = results.parent / "clip.safetensors"
    monkeypatch.setattr(sys, "argv", ["use_plan_wan.py", str(fit / "plan"), "--prompt", prompt, "--seed", "0",
                                      "--out", str(out)])
    runpy.run_path(str(ROOT / "examples" / "use_plan_wan.py"), run_name="__main__")
    mine = load_file(str(out))
    from ertacli.runs.media import to_uint8

    plan = ertacli.load_plan(fit / "plan")
    assert plan.adjusted_sigmas is not None and set(plan.branches) == {"cond", "uncond"} and plan.n_cached > 0
    assert torch.equal(torch.from_numpy(to_uint8(mine["frames"])),
                       load_file(str(gen / "samples" / "000.frames.safetensors"))["frames"])
    assert torch.equal(mine["latents"], load_file(str(gen / "latents.safetensors"))["sample.0"])
    assert f"NFE {dict((b, 10 - len(plan.cached_steps[b])) for b in plan.branches)}" in capsys.readouterr().out


def test_search_method_auto_lambda_equals_calibrate(tmp_path_factory):
    """`ertacache search --method auto --lambda 0.15` and `ertacli.calibrate(method="auto", lam=0.15)` on the same
    prompts, seeds and settings: one calibration function, the same plan (cached steps, predictor, corrections)."""
    from ertacli.recipe import read_prompt_file

    sets = ["--set", "sampling.steps=8", "--auto-trials", "4", "-q"]
    with isolated(tmp_path_factory, "auto-same") as (mp, root):
        code, _, err = cli(mp, _Capture(), "search", "-m", "tiny-flux", "--method", "auto", "--lambda", "0.15", *sets)
        assert code == 0, err
        (search,) = runs(root / "results", "tiny-flux", "search")
        cli_plan = ertacli.load_plan(search / "plans" / "auto")
    prompts = read_prompt_file(ROOT / "prompts" / "tiny-calibration.txt")
    plan = ertacli.calibrate(flux_pipe(), prompts, seeds=[0, 1], lam=0.15, method="auto", auto_trials=4,
                             prompt_encoder=ertacli.minilm_encoder("flux"), num_inference_steps=8, height=16,
                             width=16, guidance_scale=3.5)
    assert plan.method == cli_plan.method == "auto"
    assert plan.auto["target_cached"] == cli_plan.auto["target_cached"] > 0
    assert plan.cached_steps == cli_plan.cached_steps and plan.residual == cli_plan.residual
    assert plan.predictor == cli_plan.predictor
    assert plan.rectify == cli_plan.rectify and plan.adjusted_sigmas == cli_plan.adjusted_sigmas
    assert plan.auto["winner"] == cli_plan.auto["winner"]
    assert plan.auto["holdout_psnr"] == pytest.approx(cli_plan.auto["holdout_psnr"], abs=1e-9)
