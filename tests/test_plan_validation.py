"""The plan validator on a corpus of malformed plans: one line naming the field, for load_plan, enable_cache and
`generate --plan` (exit 2, no run directory left)."""

from __future__ import annotations

import copy
import json
import os

import pytest

import ertacli
from conftest import cli
from ertacli.errors import UserError

VALID = {
    "recipe": "tiny-flux-random", "recipe_key": "0123456789abcdef", "model_id": "FluxPipeline:tiny", "steps": 6,
    "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "config": {}}, "residual": "hidden",
    "base_sigmas": [1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.0], "branches": ["cond"], "cached_steps": {"cond": [2, 3]},
    "sample_shape": {"cond": [16, 4, 4]}, "calibration": {}, "lam": 0.1,
    "predictor": {"kind": "extrapolate", "order": 1, "abscissa": "sigma", "c": {"cond": {"2": 0.9}}},
    "adjusted_sigmas": [1.0, 0.8, 0.62, 0.45, 0.2, 0.1, 0.0],
    "rectify": {"enabled": True, "form": "linear", "granularity": "scalar", "scalar": {"cond": {"2": [0.1, 0.0]}}},
    "format": 1,
}


def _set(path: str, value):
    def apply(d):
        *keys, last = path.split(".")
        for k in keys:
            d = d[k]
        d[last] = value
    return apply


CORPUS = {  # name: (mutation, the field the message must name)
    "nan-coefficient": (_set("rectify.scalar.cond.2", [float("nan"), 0.0]), "rectify.scalar.cond.2"),
    "inf-gain": (_set("predictor.c.cond.2", float("inf")), "predictor.c.cond.2"),
    "nan-sigma": (_set("base_sigmas", [1.0, float("nan"), 0.6, 0.4, 0.2, 0.1, 0.0]), "base_sigmas[1]"),
    "increasing-adjusted": (_set("adjusted_sigmas", [1.0, 0.8, 0.9, 0.45, 0.2, 0.1, 0.0]), "adjusted_sigmas"),
    "steps-as-strings": (_set("cached_steps.cond", ["2", "3"]), "cached_steps.cond[0]"),
    "steps-as-floats": (_set("cached_steps.cond", [2.0]), "cached_steps.cond[0]"),
    "steps-as-booleans": (_set("cached_steps.cond", [True]), "cached_steps.cond[0]"),
    "duplicate-steps": (_set("cached_steps.cond", [2, 2, 2, 2, 2, 2, 2, 3]), "cached_steps.cond"),
    "step-out-of-range": (_set("cached_steps.cond", [6]), "cached_steps.cond[0]"),  # T-1 = 5 may be cached
    "step-zero": (_set("cached_steps.cond", [0, 5]), "cached_steps.cond[0]"),
    "unknown-branch": (_set("cached_steps", {"uncond": [2]}), "cached_steps.uncond"),
    "branch-not-of-backbone": (_set("branches", ["cond", "negative"]), "branches"),
    "unknown-form": (_set("rectify.form", "cubic"), "rectify.form"),
    "unknown-granularity": (_set("rectify.granularity", "pixel"), "rectify.granularity"),
    "steps-as-string": (_set("steps", "6"), "steps"),
    "steps-huge": (_set("steps", 10 ** 12), "steps"),
    "unknown-pipeline": (_set("model_id", "NoSuchPipeline:x"), "model_id"),
    "unknown-residual": (_set("residual", "pixels"), "residual"),
    "unknown-predictor": (_set("predictor.kind", "magic"), "predictor.kind"),
    "negative-lambda": (_set("lam", -1.0), "lam"),
    "missing-field": (lambda d: d.pop("cached_steps"), "cached_steps"),
}


def write(folder, data) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(data))
    return str(folder)


def test_the_valid_plan_loads(tmp_path):
    plan = ertacli.load_plan(write(tmp_path / "ok", VALID))
    assert plan.nfe == 4


@pytest.mark.parametrize("name", CORPUS)
def test_malformed_plan_is_one_line_naming_the_field(tmp_path, name):
    mutate, field = CORPUS[name]
    data = copy.deepcopy(VALID)
    mutate(data)
    with pytest.raises(UserError) as info:
        ertacli.load_plan(write(tmp_path / name, data))
    msg = info.value.message
    assert f"field {field}" in msg and "re-run `ertacache" in msg and "\n" not in msg


def test_enable_cache_validates_a_plan_built_in_python(tmp_path):
    plan = ertacli.load_plan(write(tmp_path / "ok", VALID))
    bad = plan.copy(cached_steps={"cond": [2, 2]})
    with pytest.raises(UserError, match="field cached_steps.cond lists"):
        ertacli.enable_cache(object(), bad, backbone="FluxPipeline")


@pytest.mark.parametrize("kind", ["huge", "device", "fifo", "nested", "binary"])
def test_unreadable_or_huge_plan_files(tmp_path, kind):
    folder = tmp_path / kind
    folder.mkdir()
    f = folder / "plan.json"
    if kind == "huge":
        with open(f, "wb") as fh:
            fh.truncate(64 * 1024 * 1024)  # sparse: no disk used
    elif kind == "device":
        f.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(f)
    elif kind == "nested":
        f.write_text("[" * 100_000 + "]" * 100_000)
    else:
        f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError) as info:
        ertacli.load_plan(folder)
    assert "plan.json" in info.value.message and len(info.value.message) <= UserError.MAX_CHARS


def test_generate_with_a_bad_plan_exits_2_and_leaves_nothing(results, monkeypatch, capsys, tmp_path):
    data = copy.deepcopy(VALID)
    data["rectify"]["scalar"]["cond"]["2"] = [float("inf"), 0.0]
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan",
                       write(tmp_path / "bad", data), "--set", "sampling.steps=6", "-q")
    assert code == 2 and "field rectify.scalar.cond.2 is not finite" in err and "\n" not in err.strip()
    assert not any(results.glob("*/*"))
