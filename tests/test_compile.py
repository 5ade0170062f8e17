"""--compile: each transformer block compiled once; cached steps cause no graph break and no recompilation."""

from __future__ import annotations


import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import LoadedSession, cli

STEPS = 6
CACHED = [[1, 2, 3, 4], [2], [1, 3], []]  # several plans, known before sampling starts


@pytest.fixture()
def fresh_dynamo(monkeypatch):
    """A clean dynamo cache and counters; dynamo's own (eager) backend unless a test sets another."""
    from ertacli.engine import hooks

    monkeypatch.setenv("ERTACACHE_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    hooks._COMPILED.clear()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()
    hooks._COMPILED.clear()


def _snapshot(counters) -> dict:
    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def _runs(recipe_name: str, compile_: bool) -> tuple[list, list]:
    """Latents and NFE of an uncached warm-up run, then one run per plan in CACHED, on one loaded pipeline."""
    from ertacli.backbones.loader import load_pipeline
    from ertacli.engine import ApplyController
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe(recipe_name, [f"sampling.steps={STEPS}"])
    loaded = load_pipeline(recipe, "cpu")
    loaded.compile = compile_
    outs, nfes = [], []
    for cached in [[]] + CACHED:
        ctl = ApplyController(STEPS, {b: set(cached) for b in loaded.backbone.branches}, residual=recipe.cache.residual)
        with LoadedSession(loaded, ctl) as session:
            outs.append(session.run_batch(recipe, ["a red circle", "two blue squares"], [0, 1]).latents)
        nfes.append(sum(ctl.nfe.values()))
        if compile_ and len(outs) == 1:
            torch._dynamo.config.error_on_recompile = True  # any later recompilation fails the run
    torch._dynamo.config.error_on_recompile = False
    return outs, nfes


@pytest.mark.parametrize("recipe", ["tiny-flux-random", "toy-adapter"])
def test_cached_steps_compile_once(fresh_dynamo, recipe):
    """Counters after the warm-up run do not grow with cached steps or runs; outputs equal the eager engine's."""
    counters = fresh_dynamo
    eager, eager_nfe = _runs(recipe, False)
    assert _snapshot(counters)["frames"] == 0
    try:
        compiled, nfe = _runs(recipe, True)
    finally:
        torch._dynamo.config.error_on_recompile = False
    snap = _snapshot(counters)
    assert snap["graph_breaks"] == 0 and snap["frames"] > 0
    # hidden mode: one graph per block class and input layout (tiny Flux: 3); latent mode: the whole model (1)
    assert snap["graphs"] == (3 if recipe == "tiny-flux-random" else 1)
    assert nfe == eager_nfe and nfe[1] < nfe[0]
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)




def test_generate_compile_flag_matches_eager(fresh_dynamo, tmp_path, monkeypatch, capsys):
    """`generate --compile` with a plan gives the eager engine's latents and NFE."""
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    fast = ["-m", "tiny-flux-random", "--set", f"sampling.steps={STEPS}", "--set", "eval.warmup=0", "-q"]
    assert cli(monkeypatch, capsys, "search", "--lambda", "0.8", *fast)[0] == 0
    plan = next((tmp_path / "results" / "tiny-flux-random").glob("search-*/plans/lambda-0.8"))
    gen = ["generate", "--plan", str(plan), "--prompt", "a red circle", *fast]
    assert cli(monkeypatch, capsys, *gen)[0] == 0
    assert cli(monkeypatch, capsys, *gen, "--compile")[0] == 0
    runs = sorted((tmp_path / "results" / "tiny-flux-random").glob("generate-*"))
    assert fresh_dynamo["frames"]["total"] > 0 and sum(fresh_dynamo["graph_break"].values()) == 0
    a, b = (load_file(str(r / "latents.safetensors")) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(pd.read_csv(runs[0] / "samples.csv")["nfe"]) == list(pd.read_csv(runs[1] / "samples.csv")["nfe"])


@pytest.fixture()
def slow_enabled(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("inductor compilation takes minutes on CPU: run with `pytest -m slow`")


@pytest.mark.slow
def test_inductor_compile_once_and_close(fresh_dynamo, monkeypatch, slow_enabled):
    """The real backend (inductor): same counters, outputs within float tolerance of eager."""
    monkeypatch.setenv("ERTACACHE_COMPILE_BACKEND", "inductor")
    eager, eager_nfe = _runs("tiny-flux-random", False)
    compiled, nfe = _runs("tiny-flux-random", True)
    snap = _snapshot(fresh_dynamo)
    assert snap["graph_breaks"] == 0 and snap["graphs"] == 3 and nfe == eager_nfe
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
