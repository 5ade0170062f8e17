"""The adapter entry: a model that is not a diffusers pipeline (examples/toy_adapter.py) through the whole loop."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import LoadedSession, cli, run_batch

FAST = ["--set", "sampling.steps=10", "--set", "eval.warmup=0",
        "--set", "eval.timing_rounds=1", "--set", "eval.timing_samples=1", "-q"]
PROMPTS = ["--prompt", "a red cat", "--prompt", "blue sky at night"]






def newest(results: Path, command: str) -> Path:
    return sorted((results / "toy-adapter").glob(f"{command}-*"))[-1]


def test_adapter_whole_loop(results, monkeypatch, capsys):
    """profile -> search -> fit -> generate -> eval on the toy adapter; plans cache steps, eval reports PSNR."""
    assert cli(monkeypatch, capsys, "profile", "-m", "toy-adapter", *FAST)[0] == 0
    profile = json.loads((newest(results, "profile") / "profile.json").read_text())
    assert profile["branches"] == ["cond", "uncond"] and profile["residual"] == "latent"
    code, _, err = cli(monkeypatch, capsys, "search", "-m", "toy-adapter", "--lambda", "0.3", *FAST)
    assert code == 0, err
    plan = json.loads((newest(results, "search") / "plans" / "lambda-0.3" / "plan.json").read_text())
    assert sum(len(s) for s in plan["cached_steps"].values()) > 0
    code, _, err = cli(monkeypatch, capsys, "fit", "-m", "toy-adapter", "--plan",
                       str(newest(results, "search") / "plans" / "lambda-0.3"), *FAST)
    assert code == 0, err
    fit_dir = newest(results, "fit")
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "toy-adapter", "--plan", str(fit_dir), *PROMPTS, *FAST)
    assert code == 0, err
    samples = pd.read_csv(newest(results, "generate") / "samples.csv")
    assert (samples["nfe"] < 20).all() and (newest(results, "generate") / "samples" / "000.png").is_file()
    code, out, err = cli(monkeypatch, capsys, "eval", "-m", "toy-adapter", "--plan", str(fit_dir), *PROMPTS, *FAST)
    assert code == 0, err
    summary = pd.read_csv(newest(results, "eval") / "summary.csv").iloc[0]
    assert summary["nfe"] < summary["baseline_nfe"] == 20
    assert 15 < float(summary["psnr"]) < 100 and "psnr" in out


def test_adapter_lambda_zero_equals_plain_loop():
    """Hooks attached, nothing cached: the adapter pipeline's output equals its run without hooks."""
    from ertacli.backbones.loader import load_pipeline
    from ertacli.engine import ApplyController
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe("toy-adapter", ["sampling.steps=6"])
    loaded = load_pipeline(recipe, "cpu")
    plain = run_batch(loaded, recipe, ["a red cat"], [3])
    with LoadedSession(loaded, ApplyController(6, {}, residual="latent")) as session:
        hooked = session.run_batch(recipe, ["a red cat"], [3])
        assert dict(session.controller.nfe) == {"cond": 6, "uncond": 6}
    assert torch.equal(plain.latents, hooked.latents)
    assert plain.media.shape == (1, 3, 32, 32) and 0 <= float(plain.media.min()) <= float(plain.media.max()) <= 1


@pytest.mark.parametrize("sets, expect", [
    (["cache.residual=hidden"], "an adapter model exposes no block stack; set cache.residual: latent"),
    (["model.adapter=null"], "pipeline 'adapter' and model.adapter"),
    (["model.adapter=nowhere_pkg.mod:build"], "cannot import nowhere_pkg.mod"),
    (["model.adapter=../examples/toy_adapter.py:nope"], "has no function 'nope'"),
])
def test_adapter_recipe_errors_one_line(results, monkeypatch, capsys, sets, expect):
    args = [a for s in sets for a in ("--set", s)]
    code, out, err = cli(monkeypatch, capsys, "profile", "-m", "toy-adapter", *args, "-q")
    assert code == 2 and expect in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
