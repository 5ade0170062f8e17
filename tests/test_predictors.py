"""Extrapolating predictors, fitted gain and placement (docs/method.md "Beyond the paper"), on the tiny pipelines (CPU)."""

from __future__ import annotations


import pytest
import torch

from ertacli.engine import ApplyController, FitController, LiveSchedule, RecordController
from ertacli.engine.predict import Predictor, newton_term

from conftest import PROMPTS, SEEDS, LoadedSession, run_batch


def _with(loaded, recipe, controller):
    with LoadedSession(loaded, controller) as s:
        return s.run_batch(recipe, PROMPTS, SEEDS)


def _steps(recipe, T):
    return recipe.model_copy(update={"sampling": recipe.sampling.model_copy(update={"steps": T})})


def _profile(loaded, recipe):
    rec = RecordController(recipe.sampling.steps)
    out = _with(loaded, recipe, rec)
    return dict(stats=rec.stats, sigmas=loaded.pipe.scheduler.sigmas.tolist(), latents=out.latents)


# ---------------------------------------------------------------- the Newton form itself

@pytest.mark.parametrize("order", [1, 2])
def test_newton_form_is_exact_on_polynomials(order):
    """Order 2 predicts a quadratic-in-sigma sequence exactly (order 1 a linear one)."""
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    f = (lambda s: a + b * s + c * s * s) if order == 2 else (lambda s: a + b * s)
    sig = [1.0, 0.8, 0.55]  # s1 > s2 > s3 in sampling order, latest first below
    hist = [(s, f(s)) for s in sig]
    for s_k in (0.4, 0.3, 0.05):
        pred = hist[0][1] + newton_term(hist, s_k, order)
        torch.testing.assert_close(pred, f(s_k), rtol=1e-12, atol=1e-12)


def test_newton_form_falls_back_to_available_order():
    R = [torch.full((2,), float(v)) for v in (3.0, 2.0, 0.0)]
    assert newton_term([(1.0, R[0])], 0.5, 2) is None                      # reuse at the start
    p1 = newton_term([(1.0, R[0]), (0.5, R[1])], 0.25, 2)                   # order 1 only
    torch.testing.assert_close(p1, torch.full((2,), -1.5))  # (0.25 - 1) * (3 - 2) / (1 - 0.5)


# ---------------------------------------------------------------- c = 0 is the paper's reuse

@pytest.mark.parametrize("which", ["tiny_flux", "tiny_wan"])
@pytest.mark.parametrize("residual", ["hidden", "velocity"])
def test_zero_gain_equals_reuse_bitwise(which, residual, request):
    loaded, recipe = request.getfixturevalue(which)
    T = recipe.sampling.steps
    cached = {b: {2, 3, 4} for b in loaded.backbone.branches}
    reuse = _with(loaded, recipe, ApplyController(T, cached, residual=residual))
    zero = Predictor("extrapolate", 2, "sigma", 0.0, [1.0] * (T + 1))
    ext0 = _with(loaded, recipe, ApplyController(T, cached, residual=residual, predictor=zero))
    assert torch.equal(ext0.latents, reuse.latents)
    one = Predictor("extrapolate", 1, "index", 1.0)
    ext1 = _with(loaded, recipe, ApplyController(T, cached, residual=residual, predictor=one))
    assert not torch.equal(ext1.latents, reuse.latents)


# ---------------------------------------------------------------- TaylorSeer-lite, reproduced

def test_velocity_extrapolation_reproduces_taylorseer_lite(tiny_flux):
    """Velocity space, order 1, c = 1 in step index, on TaylorSeer-lite's computed steps == diffusers' output."""
    from diffusers import TaylorSeerCacheConfig

    loaded, recipe = tiny_flux
    T, interval, before = 8, 2, 2
    recipe = _steps(recipe, T)
    # diffusers computes step k when k < before or (k - before - 1) % interval == 0
    cached = {k for k in range(T) if not (k < before or (k - before - 1) % interval == 0)}
    assert cached == {2, 4, 6}
    tr = loaded.pipe.transformer
    tr.enable_cache(TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=before, max_order=1,
                                          use_lite_mode=True, taylor_factors_dtype=torch.float32))
    try:
        ref = run_batch(loaded, recipe, PROMPTS, SEEDS)
    finally:
        tr.disable_cache()
    pred = Predictor("extrapolate", 1, "index", 1.0)
    ctl = ApplyController(T, {"cond": cached}, residual="velocity", predictor=pred)
    ours = _with(loaded, recipe, ctl)
    assert ctl.nfe["cond"] == T - len(cached)
    diff = (ours.latents - ref.latents).abs().max().item()
    print(f"taylorseer-lite max |diff| = {diff:.3g}")
    assert diff <= 1e-5, diff


# ---------------------------------------------------------------- fitted gain replays exactly

@pytest.mark.parametrize("which,cached", [("tiny_flux", {"cond": {2, 4}}),
                                          ("tiny_wan", {"cond": {2, 4}, "uncond": {3, 4}})])
@pytest.mark.parametrize("adjust", [False, True])
def test_fitted_gain_replays_exactly(which, cached, adjust, request):
    loaded, recipe = request.getfixturevalue(which)
    T = recipe.sampling.steps
    prof = _profile(loaded, recipe)
    base = prof["sigmas"]
    pred = Predictor("extrapolate", 2, "sigma", 1.0, base)
    fit = FitController(T, cached, {b: r["dv"] for b, r in prof["stats"].items()}, base, adjust, True,
                        predictor=pred, fit_gain=True)
    fitted = _with(loaded, recipe, fit)
    assert {b: set(g) for b, g in fit.gains.items()} == cached
    gains = {b: {str(k): c for k, c in g.items()} for b, g in fit.gains.items()}
    replay_pred = Predictor.from_plan({**pred.to_json(), "c": gains}, base)
    schedule = LiveSchedule(base, fixed=fit.schedule.sigmas) if adjust else None
    app = ApplyController(T, cached, coeffs={b: dict(d) for b, d in fit.coeffs.items()}, schedule=schedule,
                          predictor=replay_pred)
    replayed = _with(loaded, recipe, app)
    assert torch.equal(replayed.latents, fitted.latents)


# ---------------------------------------------------------------- placement never worse

def test_placement_never_worse_than_start(tiny_wan):
    from ertacli.calibration.samples import Samples
    from ertacli.calibration.placement import move, optimize_placement, placement_error
    from ertacli.plan import Plan

    loaded, recipe = tiny_wan
    T = recipe.sampling.steps
    assert move(T, [2, 3], 1, 2) == [1, 3] and move(T, [2, 3], 0, 1) is None and move(T, [2], 4, 3) is None
    prof = _profile(loaded, recipe)
    samples = Samples(list(PROMPTS), list(SEEDS))
    ref = _with(loaded, recipe, RecordController(T)).latents
    from ertacli.backbones.sampler import Sampler

    job = Sampler.from_recipe(loaded, recipe)
    branches = list(loaded.backbone.branches)
    plan = Plan(recipe="t", recipe_key="k", model_id="m", steps=T, scheduler={}, residual="hidden",
                base_sigmas=prof["sigmas"], branches=branches, cached_steps={b: [1, 2] for b in branches},
                sample_shape={}, calibration={},
                predictor={"kind": "extrapolate", "order": 1, "abscissa": "sigma", "c": 1.0})
    out = optimize_placement(job, plan, samples, ref, max_trials=6)
    pl = out.placement
    assert pl["after"] <= pl["before"] and 1 <= pl["trials"] <= 6
    assert out.nfe == plan.nfe
    assert all(0 not in s and T - 1 not in s for s in out.cached_steps.values())
    assert placement_error(job, out, samples, ref) == pl["after"]
    assert placement_error(job, plan, samples, ref) == pl["before"]


# ---------------------------------------------------------------- CLI: search --predictor, fit --gain --optimize-placement

def test_cli_extrapolating_search_fit_gain_and_placement(results, monkeypatch, capsys):
    from safetensors.torch import load_file
    from conftest import cli
    from test_cli import FAST, runs

    from ertacli.calibration.samples import Samples
    from ertacli.runs.job import Job
    from ertacli.calibration.passes import apply_controller
    from ertacli.plan import load_plan

    code, _, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--lambda", "0.5",
                       "--predictor", "extrapolate", "--order", "2", *FAST)
    assert code == 0, err
    plan_dir = sorted(runs(results, "tiny-flux-random", "search")[-1].glob("plans/*"))[0]
    searched = load_plan(plan_dir)
    assert searched.predictor == {"kind": "extrapolate", "order": 2, "abscissa": "sigma", "c": 1.0}
    assert searched.n_cached > 0
    code, out, err = cli(monkeypatch, capsys, "fit", "-m", "tiny-flux-random", "--plan", str(plan_dir),
                         "--adjust", "off", "--rectify", "off", "--gain", "on", "--optimize-placement",
                         "--placement-trials", "3", *FAST)
    assert code == 0, err
    assert "placement: calibration L1" in out
    (fit_run,) = runs(results, "tiny-flux-random", "fit")
    plan = load_plan(fit_run)
    assert plan.placement["after"] <= plan.placement["before"] and plan.placement["trials"] <= 3
    assert plan.nfe == searched.nfe and plan.fit["decision"]["gain"] is True
    assert isinstance(plan.predictor["c"], dict) and plan.predictor["c"]["cond"]
    assert set(plan.predictor["c"]["cond"]) <= {str(k) for k in plan.cached_steps["cond"]}
    job = Job.make("tiny-flux-random", [s for s in FAST if s.startswith(("model", "sampling", "eval", "fit"))], "cpu")
    fit_set = Samples(plan.fit["fit_samples"]["prompts"], plan.fit["fit_samples"]["seeds"])
    ctl = apply_controller(plan, job.loaded.backbone.channel_dim, plan.coeffs(), plan.adjusted_sigmas)
    with LoadedSession(job.loaded, ctl) as session:
        replay = session.run_batch(job.recipe, fit_set.prompts, fit_set.seeds)
    assert torch.equal(replay.latents, load_file(str(fit_run / "fit_latents.safetensors"))["latents"])
