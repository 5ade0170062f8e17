"""torch.compile: each transformer block compiled once; cached steps cause no graph break and no recompilation.

Also the ways users compile a pipeline's transformer around `ertacli.enable_cache` (README, "Use a plan in your
own code"): `torch.compile(pipe.transformer)` before or after enabling, `.compile()`, `.compile_repeated_blocks()`
and `enable_cache(..., compile=True)`.
"""

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




FAST = ["-m", "tiny-flux-random", "--set", f"sampling.steps={STEPS}", "--set", "eval.warmup=0", "-q"]


@pytest.fixture(scope="module")
def flux_plan(tmp_path_factory):
    """A searched plan on tiny-flux-random (STEPS steps, 4 cached calls), made by `ertacache search`."""
    root = tmp_path_factory.mktemp("compile")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERTACACHE_RESULTS", str(root / "results"))
    mp.chdir(root)
    try:
        assert cli(mp, _NoCapture(), "search", "--lambda", "0.8", *FAST)[0] == 0
    finally:
        mp.undo()
    return next((root / "results" / "tiny-flux-random").glob("search-*/plans/lambda-0.8"))


class _NoCapture:
    def readouterr(self):
        return type("Out", (), {"out": "", "err": ""})()


def test_generate_compile_flag_matches_eager(fresh_dynamo, flux_plan, tmp_path, monkeypatch, capsys):
    """`generate --compile` with a plan gives the eager engine's latents and NFE."""
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    fast, plan = FAST, flux_plan
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


# ---------------------------------------------------------------- the ways users compile around enable_cache

FORMS = ["compile-then-enable", "enable-then-compile", "module-compile", "repeated-blocks", "enable-compile-flag"]
OUR_HOOKS = ("StepHook.new_forward", "StackHeadHook.new_forward", "StackBlockHook.new_forward")


def _flux():
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe("tiny-flux-random", [f"sampling.steps={STEPS}"])
    return load_pipeline(recipe, "cpu"), recipe


def _call(loaded, recipe) -> torch.Tensor:
    return loaded.pipe(num_inference_steps=STEPS, height=recipe.sampling.height, width=recipe.sampling.width,
                       output_type="latent", generator=torch.Generator("cpu").manual_seed(0),
                       **loaded.encoder.pipeline_kwargs(["a red circle"], "")).images


@pytest.fixture(scope="module")
def eager_cached(flux_plan):
    """(plain output, cached output, last_call_stats) of the plan on an uncompiled pipeline."""
    import ertacli

    loaded, recipe = _flux()
    plain = _call(loaded, recipe)
    with ertacli.cached(loaded.pipe, str(flux_plan)):
        cached = _call(loaded, recipe)
        stats = ertacli.last_call_stats(loaded.pipe)
    assert stats["nfe"] == 2 and not torch.equal(cached, plain)
    return plain, cached, stats


def _compile_form(form: str, pipe, plan) -> None:
    """What a user writes: compile the transformer (one of FORMS) and enable the plan, in that form's order."""
    import ertacli

    if form == "compile-then-enable":
        pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    elif form == "module-compile":
        pipe.transformer.compile(backend="eager")
    elif form == "repeated-blocks":
        pipe.transformer.compile_repeated_blocks(backend="eager")
    ertacli.enable_cache(pipe, plan, compile=form == "enable-compile-flag")
    if form == "enable-then-compile":
        pipe.transformer = torch.compile(pipe.transformer, backend="eager")


@pytest.mark.parametrize("form", FORMS)
def test_user_compile_forms(fresh_dynamo, flux_plan, eager_cached, form):
    """Each form: the eager cached output and stats on three calls, no recompile after the first call, no graph
    break but the one where Dynamo meets the (eager) caching hooks, and disable_cache restores the plain output."""
    import ertacli

    plain, want, want_stats = eager_cached
    loaded, recipe = _flux()
    plan = ertacli.load_plan(flux_plan)
    _compile_form(form, loaded.pipe, plan)
    counters = fresh_dynamo
    outs = [_call(loaded, recipe)]
    first = _snapshot(counters)
    torch._dynamo.config.error_on_recompile = True
    try:
        outs += [_call(loaded, recipe), _call(loaded, recipe)]
        assert ertacli.last_call_stats(loaded.pipe) == want_stats
    finally:
        torch._dynamo.config.error_on_recompile = False
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert _snapshot(counters) == first and first["frames"] > 0
    assert first["graphs"] == 3  # one graph per block class and input layout, as --compile
    breaks = [reason for reason in counters["graph_break"]]
    assert all(any(h in reason for h in OUR_HOOKS) for reason in breaks), breaks
    ertacli.disable_cache(loaded.pipe)
    with pytest.raises(ertacli.UserError, match="no ertacache plan"):
        ertacli.last_call_stats(loaded.pipe)
    torch.testing.assert_close(_call(loaded, recipe), plain, rtol=1e-5, atol=1e-5)
