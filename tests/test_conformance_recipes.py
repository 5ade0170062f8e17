"""`recipes new --from DIR`, `--model DIR` and the bundled recipes of issue 22 (Wan2.2, I2V, Qwen-Image, Kontext)."""

from __future__ import annotations

import json

import pytest

from conftest import cli
from ertacli.backbones import tiny_zoo
from ertacli.backbones.discover import branches_by_name
from ertacli.recipe import resolve_recipe

NEW = ("wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "wan2.1-i2v-14b", "qwen-image", "flux-kontext")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A tiny CogView4 pipeline (a family with no registry entry) saved with save_pretrained, no text encoder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "tiny-cogview4"
    tiny_zoo.build("cogview4").pipe.save_pretrained(path)
    return path


def test_recipes_new_from_folder_then_search(folder, results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "recipes", "new", "--from", str(folder))
    assert code == 0, err
    recipe = resolve_recipe("recipes/tiny-cogview4.yaml")
    assert recipe.model.pipeline == "CogView4Pipeline" and recipe.model.path == str(folder.resolve())
    assert recipe.model.text_encoder == "hash" and recipe.model.dtype == "float32"
    assert (recipe.sampling.height, recipe.sampling.width, recipe.sampling.steps) == (16, 16, 50)
    prompts = folder.parent / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\na green tree\na cat\n")
    code, out, err = cli(monkeypatch, capsys, "search", "--model", "recipes/tiny-cogview4.yaml", "--lambda", "0.1",
                         "--set", f"calibration.prompts={prompts}", "-q")
    assert code == 0, err
    plans = list(results.rglob("plan.json"))
    assert len(plans) == 1
    plan = json.loads(plans[0].read_text())
    assert plan["branches"] == ["cond", "uncond"] and sum(map(len, plan["cached_steps"].values())) > 0

    code, out, err = cli(monkeypatch, capsys, "recipes", "new", "--from", str(folder))
    assert code == 2 and "exists; pass --force" in err


def test_model_accepts_a_pipeline_folder(folder):
    recipe = resolve_recipe(str(folder))
    assert recipe.model.pipeline == "CogView4Pipeline" and recipe.name == "tiny-cogview4"


def test_recipes_new_refuses_a_folder_without_index(tmp_path, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "recipes", "new", "--from", str(tmp_path))
    assert code == 2 and "model_index.json" in err and "Traceback" not in err


@pytest.mark.parametrize("name", NEW)
def test_new_recipes_valid(name, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "validate", name)
    assert code == 0 and out.startswith("done: ok "), err
    r = resolve_recipe(name)
    assert r.model.source == "pretrained" and "/" in r.model.path and r.model.dtype == "bfloat16"
    assert branches_by_name(r.model.pipeline)
    image = (r.sampling.pipeline_kwargs or {}).get("image")
    if r.model.pipeline in ("WanImageToVideoPipeline", "FluxKontextPipeline"):
        from ertacli.backbones.sampler import recipe_call_kwargs

        assert image and recipe_call_kwargs(r, "image")["image"].size[0] > 0  # the conditioning file is read
