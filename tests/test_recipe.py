"""Recipe resolution: includes, overrides, one-line errors, prompts and digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ertacli.errors import UserError
from ertacli.recipe import (
    find_recipe,
    list_recipes,
    load_raw,
    parse_overrides,
    read_prompt_file,
    resolve_recipe,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    """Write a file (parents created) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def rdir(tmp_path, monkeypatch):
    """A private recipes folder with a base, a recipe and prompt files."""
    d = tmp_path / "recipes"
    write(d / "_base.yaml", "sampling:\n  steps: 10\n  height: 64\nsearch:\n  lambdas: [0.3]\n"
          "calibration:\n  prompts: ../prompts/cal.txt\n")
    write(d / "mine.yaml", "name: mine\ninclude: _base.yaml\nmodel:\n  pipeline: FluxPipeline\n"
          "sampling:\n  steps: 12\n")
    write(tmp_path / "prompts" / "cal.txt", "# comment\n  first prompt  \n\nsecond prompt\n")
    monkeypatch.setenv("ERTACACHE_RECIPES", str(d))
    return d


def test_precedence_defaults_base_recipe_set(rdir):
    r = resolve_recipe("mine", [])
    assert r.sampling.width == 32          # schema default
    assert r.sampling.height == 64         # base
    assert r.sampling.steps == 12          # recipe beats base
    assert r.search.lambdas == [0.3]       # base beats default
    r = resolve_recipe("mine", ["sampling.steps=7", "search.lambdas=[0, 1.5]", "model.path=null"])
    assert r.sampling.steps == 7
    assert r.search.lambdas == [0.0, 1.5]
    assert r.model.path is None
    assert r.source_path == (rdir / "mine.yaml").resolve()
    assert "include" not in r.to_yaml()
    assert "height: 64" in r.to_yaml()


def test_parse_overrides_nested_and_typed():
    assert parse_overrides(["a.b=3", "a.c=x y", "d=[1, 2]", "e=null", "f="]) == {
        "a": {"b": 3, "c": "x y"}, "d": [1, 2], "e": None, "f": ""}
    with pytest.raises(UserError, match=r"--set 'sampling\.steps': expected KEY\.PATH=VALUE"):
        parse_overrides(["sampling.steps"])


def test_unknown_key_names_dotted_field(rdir):
    with pytest.raises(UserError) as ei:
        resolve_recipe("mine", ["sampling.stepz=3"])
    msg = str(ei.value)
    assert msg == f"recipe {rdir / 'mine.yaml'}: unknown key 'sampling.stepz'; fix the recipe or --set"


def test_wrong_type_names_field_and_value(rdir):
    with pytest.raises(UserError) as ei:
        resolve_recipe("mine", ["sampling.steps=abc"])
    msg = str(ei.value)
    assert msg.startswith(f"recipe {rdir / 'mine.yaml'}: field 'sampling.steps': Input should be a valid integer")
    assert "(got 'abc'); fix the recipe or --set" in msg
    assert "\n" not in msg


def test_range_and_enum_errors(rdir):
    with pytest.raises(UserError, match=r"field 'search\.lambdas\.1': Input should be greater than or equal to 0 \(got -0\.1\)"):
        resolve_recipe("mine", ["search.lambdas=[0.1, -0.1]"])
    with pytest.raises(UserError, match=r"field 'sampling\.steps': Input should be greater than or equal to 2"):
        resolve_recipe("mine", ["sampling.steps=1"])
    with pytest.raises(UserError, match=r"field 'cache\.residual': Input should be 'hidden', 'latent' or 'velocity'"):
        resolve_recipe("mine", ["cache.residual=both"])
    with pytest.raises(UserError, match=r"field 'calibration\.holdout'"):
        resolve_recipe("mine", ["calibration.holdout=1"])
    with pytest.raises(UserError, match=r"field 'model': model\.path .* required when source is 'pretrained'"):
        resolve_recipe("mine", ["model.source=pretrained"])


def test_missing_required_field(rdir):
    write(rdir / "noname.yaml", "model:\n  pipeline: FluxPipeline\n")
    with pytest.raises(UserError, match=r"field 'name': Field required; fix the recipe or --set$"):
        resolve_recipe("noname", [])


def test_malformed_yaml_is_one_line_with_file(rdir):
    bad = write(rdir / "bad.yaml", "name: bad\nmodel:\n  pipeline: [unclosed\nsampling:\n  steps: 3\n")
    with pytest.raises(UserError) as ei:
        resolve_recipe("bad", [])
    msg = str(ei.value)
    assert msg.startswith(f"{bad}: invalid YAML at line ")
    assert "\n" not in msg


def test_malformed_yaml_in_include_names_included_file(rdir):
    write(rdir / "_broken.yaml", "a: b: c\n")
    write(rdir / "child.yaml", "name: child\ninclude: _broken.yaml\nmodel: {pipeline: X}\n")
    with pytest.raises(UserError, match=rf"^{rdir / '_broken.yaml'}: invalid YAML at line 1: "):
        load_raw(rdir / "child.yaml")


def test_unknown_recipe_suggests_close_names(rdir):
    with pytest.raises(UserError) as ei:
        find_recipe("mien")
    msg = str(ei.value)
    assert "unknown recipe 'mien'" in msg
    assert "did you mean mine?" in msg
    assert "ertacache recipes" in msg
    assert find_recipe("mine") == rdir / "mine.yaml"
    assert find_recipe(str(rdir / "mine.yaml")) == rdir / "mine.yaml"


def test_include_cycle_detected(rdir):
    write(rdir / "a.yaml", "name: a\ninclude: b.yaml\n")
    write(rdir / "b.yaml", "include: a.yaml\n")
    with pytest.raises(UserError, match=r"include cycle a\.yaml -> b\.yaml -> a\.yaml"):
        resolve_recipe("a", [])


def test_missing_include_file(rdir):
    write(rdir / "orphan.yaml", "name: o\ninclude: nothere.yaml\nmodel: {pipeline: X}\n")
    with pytest.raises(UserError, match=r"included file not found: .*nothere\.yaml"):
        resolve_recipe("orphan", [])


def test_include_from_other_folder_rebases_prompt_paths(tmp_path):
    write(tmp_path / "shared" / "base.yaml", "calibration:\n  prompts: p.txt\n")
    write(tmp_path / "shared" / "p.txt", "hello\n")
    rec = write(tmp_path / "mine" / "r.yaml", "name: r\ninclude: ../shared/base.yaml\nmodel: {pipeline: X}\n")
    r = resolve_recipe(str(rec), [])
    assert r.prompt_file("calibration") == tmp_path / "shared" / "p.txt"
    assert r.read_prompts("calibration") == ["hello"]


def test_prompts_read_and_missing(rdir, tmp_path):
    r = resolve_recipe("mine", [])
    assert r.prompt_file("calibration") == tmp_path / "prompts" / "cal.txt"
    assert r.read_prompts("calibration") == ["first prompt", "second prompt"]
    missing = tmp_path / "prompts" / "nope.txt"
    r2 = resolve_recipe("mine", ["calibration.prompts=nope.txt"])
    with pytest.raises(UserError) as ei:
        r2.read_prompts("calibration")
    assert str(ei.value) == (f"prompt file not found: {rdir / 'nope.txt'} "
                             "(set calibration.prompts / eval.prompts or pass --prompts FILE)")
    with pytest.raises(UserError, match=f"prompt file not found: {missing}"):
        read_prompt_file(missing)
    empty = write(tmp_path / "empty.txt", "# only a comment\n\n   \n")
    with pytest.raises(UserError, match="has no prompts"):
        read_prompt_file(empty)


def test_digest_stable_and_sensitive(rdir):
    a = resolve_recipe("mine", [])
    b = resolve_recipe("mine", [])
    assert a.digest() == b.digest()
    assert len(a.digest()) == 16 and int(a.digest(), 16) >= 0
    assert resolve_recipe("mine", ["description=other words"]).digest() == a.digest()
    assert resolve_recipe("mine", ["sampling.steps=13"]).digest() != a.digest()
    assert resolve_recipe("mine", ["fit.granularity=channel"]).digest() != a.digest()


def test_list_recipes_reports_errors(rdir):
    write(rdir / "broken.yaml", "name: broken\nmodel: {pipeline: X}\nsampling: {steps: x}\n")
    listed = dict(list_recipes())
    assert {"mine", "broken"} <= set(listed) and "_base" not in listed
    assert "tiny-flux" in listed  # $ERTACACHE_RECIPES adds to the bundled recipes, it does not hide them
    assert listed["mine"].name == "mine"
    assert isinstance(listed["broken"], str) and "field 'sampling.steps'" in listed["broken"]


def test_bundled_recipes_resolve(monkeypatch, tmp_path):
    monkeypatch.delenv("ERTACACHE_RECIPES", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./recipes: only the bundled ones (the checkout's recipes/ here)
    assert find_recipe("tiny-flux") == REPO / "recipes" / "tiny-flux.yaml"
    listed = dict(list_recipes())
    assert {"tiny-flux", "tiny-wan"} <= set(listed)
    flux, wan = listed["tiny-flux"], listed["tiny-wan"]
    assert not isinstance(flux, str) and not isinstance(wan, str)
    assert flux.model.pipeline == "FluxPipeline" and wan.model.pipeline == "WanPipeline"
    assert wan.model.scheduler == "flow-euler" and wan.sampling.frames
    for r in (flux, wan):
        assert r.search.lambdas and len(r.read_prompts("calibration")) >= 2 and r.read_prompts("eval")
    assert not set(flux.read_prompts("calibration")) & set(flux.read_prompts("eval"))
