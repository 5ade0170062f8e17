"""Recording at the edge: composed commands keep the library's objects in memory and only write run folders."""

from __future__ import annotations

import json

import pytest

from conftest import cli

FAST = ["--set", "sampling.steps=8", "--set", "eval.warmup=0", "--set", "eval.timing_rounds=1",
        "--set", "eval.timing_samples=1", "-q"]


def _no_read_back(monkeypatch):
    """Any plan or profile read from disk fails the test: what a command made, it keeps in memory."""
    import importlib

    import ertacli.commands.profile as profile_cmd
    import ertacli.plan as plan_mod

    for name in ("fit", "search", "sweep", "demo", "eval", "generate", "bench"):  # bound before the patch
        importlib.import_module(f"ertacli.commands.{name}")

    def refuse(*args, **kwargs):
        raise AssertionError(f"read back from disk: {args[:1]}")

    monkeypatch.setattr(plan_mod, "load_plan", refuse)
    monkeypatch.setattr(profile_cmd, "load_profile", refuse)


def test_demo_reads_back_nothing_it_wrote(results, monkeypatch, capsys):
    _no_read_back(monkeypatch)
    code, out, err = cli(monkeypatch, capsys, "demo", "-m", "tiny-flux-random", "--lambda", "0.5", "--samples", "1",
                         *FAST)
    assert code == 0, err
    (demo,) = (results / "tiny-flux-random").glob("demo-*")
    info = json.loads((demo / "demo.json").read_text())
    rows = info["rows"] + info["ablation"]
    # every plan row names the plan folder the recorder wrote it to, and that folder holds that plan
    for row in (r for r in rows if r.get("plan")):
        data = json.loads(open(f"{row['plan']}/plan.json").read())
        assert sum(len(v) for v in data["cached_steps"].values()) == row["cached_steps"]
    assert [r["method"] for r in info["ablation"]][:2] == ["uniform cache", "offline policy"]


def test_profile_from_a_file_is_checked_once_in_one_place(tmp_path):
    """profile.json content: a missing field or a profile without the split is one line naming it."""
    from ertacli.calibration.profile import Profile
    from ertacli.errors import UserError

    with pytest.raises(UserError, match="predates the held-out split"):
        Profile.from_json({"steps": 8}, "profile X")
    with pytest.raises(UserError, match="field 'stats' is missing"):
        Profile.from_json({"split": None, "steps": 8, "residual": "hidden", "branches": ["cond"], "scheduler": {},
                           "base_sigmas": [], "sample_shape": {}, "calibration": {}}, "profile X")


def test_presets_are_config_objects_and_one_table_lists_the_values():
    """--method presets are typed settings; the recipe schema, plan validator and engine share one table."""
    from ertacli import choices, plan_check
    from ertacli.calibration.run import MethodConfig
    from ertacli.engine import predict
    from ertacli.presets import METHODS
    from ertacli.recipe import CacheCfg

    assert plan_check.KINDS is choices.KINDS is predict.KINDS and plan_check.FORMS is choices.FORMS
    assert CacheCfg.model_fields["residual"].annotation.__args__ == choices.RESIDUALS
    x2p = MethodConfig.preset("ertacache-x2p")
    assert (x2p.cache.predictor, x2p.cache.order, x2p.fit.optimize_placement, x2p.auto) == ("extrapolate", 2, True,
                                                                                            False)
    auto = MethodConfig.preset("auto", auto_trials=5)
    assert auto.auto and auto.auto_trials == 5 and auto.cache.residual == "hidden"
    assert METHODS["ertacache"].overrides == ("cache.predictor=reuse", "fit.optimize_placement=false",
                                              "search.auto=false")


def test_one_target_conversion():
    """The target -> cached-count conversion, written once."""
    from ertacli.calibration.run import Target, cached_count
    from ertacli.errors import UserError

    assert cached_count(Target(nfe=6), ["cond"], 20, "r") == 14
    assert cached_count(Target(nfe=10), ["cond", "uncond"], 20, "r") == 30
    assert cached_count(Target(speedup=2.0), ["cond"], 20, "r") == 10
    assert cached_count(Target(speedup=2.5), ["cond"], 20, "r") == 12
    assert cached_count(Target(cached=7), ["cond"], 20, "r") == 7
    assert cached_count(Target(lam=0.1), ["cond"], 20, "r") is None
    with pytest.raises(UserError, match="exactly one target"):
        Target(lam=0.1, nfe=4)
    with pytest.raises(UserError, match="--nfe 1 is out of range"):
        cached_count(Target(nfe=1), ["cond"], 20, "r")
