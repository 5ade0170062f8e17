"""The real recipes (flux, wan2.1, cogvideox-2b, hunyuanvideo, sd3, ltx-video) end to end on tiny random weights.

Each runs profile -> search -> generate in-process through the CLI with `--set model.source=tiny` and small
sizes, so the recipe, the backbone registry entry, the tiny builder and the engine's hooks are checked together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ertacli.backbones import get_backbone
from ertacli.recipe import list_recipes, read_prompt_file, resolve_recipe
from conftest import cli

# recipe: (height, width, frames or None, branches the plan must hold)
CASES = {
    "flux": (16, 16, None, {"cond"}),
    "wan2.1": (16, 16, 5, {"cond", "uncond"}),
    "cogvideox-2b": (16, 16, 9, {"cond_uncond"}),
    "hunyuanvideo": (16, 16, 5, {"cond"}),
    "sd3": (16, 16, None, {"cond_uncond"}),  # no cache_context in the pipeline: the backbone's default branch
    "ltx-video": (32, 32, 9, {"cond_uncond"}),
}
REAL = ("wan2.1", "wan2.1-14b", "flux", "cogvideox-2b", "cogvideox-5b", "hunyuanvideo", "sd3", "ltx-video")
QUICK = ["--set", "eval.warmup=0", "--set", "eval.timing_rounds=1", "--set", "eval.timing_samples=1", "-q"]






def tiny_sets(recipe: str, prompts: Path) -> list[str]:
    """--set overrides that run a real recipe on its tiny model, small and fast."""
    h, w, frames, _ = CASES[recipe]
    sets = ["model.source=tiny", "sampling.steps=4", f"sampling.height={h}", f"sampling.width={w}",
            "calibration.seeds=[0]", f"calibration.prompts={prompts}"]
    sets += [f"sampling.frames={frames}"] if frames else []
    return [x for s in sets for x in ("--set", s)] + QUICK


@pytest.mark.parametrize("recipe", list(CASES))
def test_profile_search_generate_on_tiny(recipe, results, monkeypatch, capsys, tmp_path):
    prompts = tmp_path / "two.txt"
    prompts.write_text("a red kite over a green hill\ntwo boats on a calm lake\n")
    sets = tiny_sets(recipe, prompts)
    for args in (["profile"], ["search"]):
        code, _, err = cli(monkeypatch, capsys, *args, "-m", recipe, *sets)
        assert code == 0, err
    plans = sorted((results / recipe).glob("search-*/plans/*/plan.json"))
    assert len(plans) == len(resolve_recipe(recipe).search.lambdas)
    plan = json.loads(plans[0].read_text())
    assert set(plan["branches"]) == set(plan["cached_steps"]) == CASES[recipe][3]
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", recipe, "--plan", str(plans[0].parent),
                       "--prompt", "a lighthouse at night", "--seed", "3", *sets)
    assert code == 0, err
    (run,) = sorted((results / recipe).glob("generate-*"))
    media = [p for p in run.rglob("*") if p.suffix in (".png", ".mp4", ".gif")]
    assert media and all(p.stat().st_size > 0 for p in media)


def test_registry_facts():
    assert get_backbone("StableDiffusion3Pipeline").default_branch == "cond_uncond"
    assert get_backbone("FluxPipeline").default_branch == "default"
    cog = get_backbone("CogVideoXPipeline")
    assert (cog.latent_layout, cog.channel_dim, cog.branches) == ("BFCHW", 2, ("cond_uncond",))
    assert get_backbone("LTXPipeline").latent_layout == "packed"
    assert get_backbone("HunyuanVideoPipeline").block_lists == ("transformer_blocks", "single_transformer_blocks")


def test_recipes_listed_and_valid(results, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = cli(monkeypatch, capsys, "recipes")
    assert code == 0, err
    listed = {name for name, r in list_recipes()}
    assert set(REAL) <= listed
    for name in listed:
        assert name in out
    for name in REAL:
        code, out, err = cli(monkeypatch, capsys, "validate", name)
        assert code == 0 and out.startswith("done: ok "), err
        r = resolve_recipe(name)
        assert r.model.source == "pretrained" and r.model.path and r.model.dtype in ("bfloat16", "float16")
        # 20 calibration prompts, fewer only where micro-batching is already at one sample per call (the cache
        # state of every calibration sample stays on the GPU: wan2.1-14b, hunyuanvideo at 80 GB)
        n_cal = len(r.read_prompts("calibration"))
        assert (n_cal >= 20 or (n_cal >= 3 and r.calibration.micro_batch == 1)) and len(r.read_prompts("eval")) >= 100
        assert r.calibration.micro_batch >= 1


def test_wan_keeps_unipc_and_tiny_ignores_path():
    r = resolve_recipe("wan2.1", ["model.source=tiny"])
    assert r.model.scheduler is None and r.model.path and r.model.source == "tiny"
    assert resolve_recipe("wan2.1", ["model.scheduler=flow-euler"]).model.scheduler == "flow-euler"
    assert r.search.lambdas == [0.08] and (r.sampling.height, r.sampling.width, r.sampling.frames) == (480, 832, 81)


@pytest.mark.parametrize("name, text, expect", [
    ("p.json", json.dumps(["a cat", " a dog ", ""]), ["a cat", "a dog"]),
    ("p.json", json.dumps([{"prompt_en": "a cat", "dimension": ["x"]}, {"prompt": "a dog"}]), ["a cat", "a dog"]),
    ("p.txt", "# comment\na cat\n\n a dog \n", ["a cat", "a dog"]),
])
def test_prompt_files_json_and_txt(tmp_path, name, text, expect):
    path = tmp_path / name
    path.write_text(text)
    assert read_prompt_file(path) == expect


@pytest.mark.parametrize("text, match", [
    ("{\"a\": 1}", "expected a JSON list"), ("[1]", "entry 0"), ("[", "invalid JSON"), ("[]", "no prompts")])
def test_prompt_file_json_errors(tmp_path, text, match):
    from ertacli.errors import UserError

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        read_prompt_file(path)
