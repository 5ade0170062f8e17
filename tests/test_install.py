"""Installable like a library: recipe lookup order, results folder, and the wheel's bundled folders."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ertacli import assets
from ertacli.errors import UserError
from ertacli.recipe import find_recipe, list_recipes, results_dir

REPO = Path(__file__).resolve().parents[1]
RECIPE = "name: {name}\nmodel: {{pipeline: FluxPipeline}}\ndescription: {desc}\n"


def recipe(folder: Path, name: str, desc: str = "") -> Path:
    """Write a minimal valid recipe NAME.yaml into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, desc=desc or str(folder)))
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder without ./recipes, $ERTACACHE_RECIPES and $ERTACACHE_RESULTS unset."""
    monkeypatch.delenv("ERTACACHE_RECIPES", raising=False)
    monkeypatch.delenv("ERTACACHE_RESULTS", raising=False)
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


def test_lookup_order_cwd_then_env_then_bundled(work, tmp_path, monkeypatch):
    env_a, env_b = tmp_path / "env-a", tmp_path / "env-b"
    local = recipe(work / "recipes", "both")
    recipe(env_a, "both")
    in_a = recipe(env_a, "shared")
    recipe(env_b, "shared")
    in_b = recipe(env_b, "only-b")
    shadow = recipe(env_b, "tiny-flux")
    monkeypatch.setenv("ERTACACHE_RECIPES", os.pathsep.join([str(env_a), "", str(env_b)]))
    assert find_recipe("both") == work / "recipes" / "both.yaml" == local
    assert find_recipe("shared") == in_a          # the first $ERTACACHE_RECIPES folder wins
    assert find_recipe("only-b") == in_b
    assert find_recipe("tiny-flux") == shadow     # an env folder shadows the bundled recipe
    assert find_recipe("tiny-wan") == assets.bundled_root() / "recipes" / "tiny-wan.yaml"
    assert find_recipe("both.yaml") == local      # a .yaml suffix on a name is the same name
    origins = {f.name: f.origin for f in assets.available_recipes()}
    assert origins["both"] == "./recipes" and origins["shared"] == origins["tiny-flux"] == "$ERTACACHE_RECIPES"
    assert origins["tiny-wan"] == "bundled" and "_base" not in origins
    listed = dict(list_recipes())
    assert listed["tiny-flux"].description == str(env_b) and listed["both"].description == str(work / "recipes")


def test_existing_path_beats_names_and_bad_path_is_one_line(work):
    mine = recipe(work / "elsewhere", "tiny-flux", desc="mine")
    assert find_recipe(str(mine)) == mine
    assert find_recipe("elsewhere/tiny-flux.yaml") == Path("elsewhere/tiny-flux.yaml")
    with pytest.raises(UserError, match=r"^recipe file not found: nope/x\.yaml \(give an existing file"):
        find_recipe("nope/x.yaml")


def test_bare_yaml_in_cwd_is_a_path_not_a_name(work):
    """./NAME.yaml is not searched for a bare NAME (unrelated YAML lives there); the error says how to use it."""
    recipe(work, "local")
    assert find_recipe("local.yaml") == Path("local.yaml")
    with pytest.raises(UserError) as ei:
        find_recipe("local")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("unknown recipe 'local' (searched bundled (")
    assert "pass --model local.yaml" in msg


def test_unknown_name_lists_search_path_and_suggests(work, tmp_path, monkeypatch):
    recipe(tmp_path / "env", "my-model")
    monkeypatch.setenv("ERTACACHE_RECIPES", str(tmp_path / "env"))
    recipe(work / "recipes", "other")
    with pytest.raises(UserError) as ei:
        find_recipe("my-modle")
    msg = str(ei.value)
    assert f"searched ./recipes, $ERTACACHE_RECIPES ({tmp_path / 'env'}), bundled (" in msg
    assert "did you mean my-model?" in msg and "\n" not in msg


def test_missing_env_folder_is_an_error(work, tmp_path, monkeypatch):
    monkeypatch.setenv("ERTACACHE_RECIPES", str(tmp_path / "typo"))
    with pytest.raises(UserError, match=r"^ERTACACHE_RECIPES entry '.*typo' is not a folder; set it to folders"):
        find_recipe("tiny-flux")
    with pytest.raises(UserError, match="ERTACACHE_RECIPES entry"):
        list_recipes()
    assert find_recipe(str(REPO / "recipes" / "tiny-flux.yaml")).is_file()  # a path needs no search


def test_cwd_recipes_same_as_bundled_listed_once(monkeypatch):
    monkeypatch.delenv("ERTACACHE_RECIPES", raising=False)
    monkeypatch.chdir(assets.bundled_root())
    path = assets.search_path()
    assert [origin for origin, _ in path] == ["./recipes"]
    names = [f.name for f in assets.available_recipes()]
    assert len(names) == len(set(names)) and {"tiny-flux", "tiny-wan"} <= set(names)


def test_results_dir_env_else_cwd_at_call_time(work, tmp_path, monkeypatch):
    assert results_dir() == work / "results"
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert results_dir() == other / "results"  # read when called, not when ertacli was imported
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "res"))
    assert results_dir() == tmp_path / "res"


def test_checkout_detected_else_package_bundled(tmp_path, monkeypatch):
    assert assets.checkout_root() == REPO and assets.bundled_root() == REPO
    site = tmp_path / "site-packages" / "ertacli"
    site.mkdir(parents=True)
    monkeypatch.setattr(assets, "PACKAGE_DIR", site)
    assert assets.checkout_root() is None
    assert assets.bundled_root() == site / "bundled"


# --- the wheel: built once from a copy of the checkout (an in-tree build would leave build/ behind) ---

WHEEL_SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "ertacli", *assets.BUNDLED_FOLDERS)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel --no-deps --no-build-isolation` builds from a copy of this checkout."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "bundled")
    for name in WHEEL_SOURCES:
        (shutil.copytree(REPO / name, src / name, ignore=skip) if (REPO / name).is_dir()
         else shutil.copy2(REPO / name, src / name))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = out.glob("ertacache-*.whl")
    return whl


def test_wheel_carries_every_bundled_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in assets.BUNDLED_FOLDERS:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(REPO).as_posix()
                assert f"ertacli/bundled/{rel}" in names, rel
    for model in ("tiny-flux", "tiny-wan"):
        for part in ("model_index.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json"):
            assert f"ertacli/bundled/models/{model}/{part}" in names
    assert "ertacli/assets.py" in names and "ertacli/cli.py" in names
    assert not any(n.startswith(("recipes/", "models/", "prompts/")) or "__pycache__" in n for n in names)


def test_unpacked_wheel_resolves_bundled_recipes_from_elsewhere(wheel, tmp_path):
    """The installed layout: tiny-flux's ../prompts and ../models paths land inside ertacli/bundled/."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    code = ("import ertacli.assets as a; from ertacli.recipe import resolve_recipe; "
            "from ertacli.backbones.loader import model_path; "
            "r = resolve_recipe('tiny-flux'); w = resolve_recipe('toy-adapter'); "
            "print(a.checkout_root(), a.bundled_root(), r.source_path, r.prompt_file('eval'), model_path(r), "
            "w.base_dir, sep='\\n')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERTACACHE_")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    checkout, root, source, prompts, model, adapter_dir = res.stdout.split("\n")[:6]
    bundled = site / "ertacli" / "bundled"
    assert checkout == "None" and Path(root) == bundled
    assert Path(source) == bundled / "recipes" / "tiny-flux.yaml"
    assert Path(prompts) == bundled / "prompts" / "tiny-eval.txt" and Path(prompts).is_file()
    assert Path(model) == bundled / "models" / "tiny-flux" and (Path(model) / "model_index.json").is_file()
    assert (Path(adapter_dir) / "../examples/toy_adapter.py").resolve().is_file()
