"""Engine hooks and controllers on the tiny pipelines (CPU): the invariants of docs/method.md, end to end."""

from __future__ import annotations

import pytest
import torch

from ertacli.engine import (
    ApplyController,
    FitController,
    LiveSchedule,
    RecordController,
    SearchController,
    Session,
    check_adjustable,
)
from ertacli.engine.rectify import coeff_shape

from conftest import PROMPTS, SEEDS, LoadedSession, run_batch


def _plain(loaded, recipe):
    return run_batch(loaded, recipe, PROMPTS, SEEDS)


def _with(loaded, recipe, controller):
    with LoadedSession(loaded, controller) as s:
        return s.run_batch(recipe, PROMPTS, SEEDS)


def _profile(loaded, recipe):
    """Uncached baseline: RecordController stats, base sigmas, final latents."""
    rec = RecordController(recipe.sampling.steps)
    out = _with(loaded, recipe, rec)
    return dict(stats=rec.stats, sigmas=loaded.pipe.scheduler.sigmas.tolist(), latents=out.latents)


@pytest.fixture(scope="module")
def flux_profile(tiny_flux):
    return _profile(*tiny_flux)


@pytest.fixture(scope="module")
def wan_profile(tiny_wan):
    return _profile(*tiny_wan)


def _no_ertacache_hooks(module: torch.nn.Module) -> None:
    for name, m in module.named_modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None:
            left = [h for h in reg.hooks if h.startswith("ertacache")]
            assert not left, f"{name or 'transformer'} still has hooks {left}"
        fwd = m.forward
        assert getattr(fwd, "__func__", None) is type(m).forward, f"{name or 'transformer'}.forward not restored"


# ---------------------------------------------------------------- hooks are transparent

@pytest.mark.parametrize("which", ["tiny_flux", "tiny_wan"])
def test_hooks_without_caching_are_identical(which, request):
    loaded, recipe = request.getfixturevalue(which)
    T = recipe.sampling.steps
    before = _plain(loaded, recipe)
    ctl = ApplyController(T, cached={b: set() for b in loaded.backbone.branches})
    hooked = _with(loaded, recipe, ctl)
    assert torch.equal(hooked.latents, before.latents)
    assert torch.equal(hooked.media, before.media)
    assert dict(ctl.nfe) == {b: T for b in loaded.backbone.branches}
    assert sum(ctl.n_cached.values()) == 0
    # detached: forward restored, no hooks left, a later plain run is unchanged
    _no_ertacache_hooks(loaded.pipe.transformer)
    assert type(loaded.pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    after = _plain(loaded, recipe)
    assert torch.equal(after.latents, before.latents)


@pytest.mark.parametrize("which", ["tiny_flux", "tiny_wan"])
def test_record_controller_is_transparent_and_complete(which, request):
    loaded, recipe = request.getfixturevalue(which)
    T = recipe.sampling.steps
    prof = request.getfixturevalue("flux_profile" if which == "tiny_flux" else "wan_profile")
    assert torch.equal(prof["latents"], _plain(loaded, recipe).latents)
    assert set(prof["stats"]) == set(loaded.backbone.branches)
    for rows in prof["stats"].values():
        assert all(len(rows[key]) == T for key in RecordController.KEYS)
        assert all(x > 0 for x in rows["R"]) and all(x > 0 for x in rows["v"])
        assert rows["dR"][0] == 0.0 and rows["dv"][0] == 0.0 and all(x > 0 for x in rows["dv"][1:])


# ---------------------------------------------------------------- search

@pytest.mark.parametrize("which", ["tiny_flux", "tiny_wan"])
def test_lambda_zero_caches_nothing(which, request):
    loaded, recipe = request.getfixturevalue(which)
    prof = request.getfixturevalue("flux_profile" if which == "tiny_flux" else "wan_profile")
    T = recipe.sampling.steps
    gt = {b: rows["R"] for b, rows in prof["stats"].items()}
    ctl = SearchController(T, 0.0, gt_norms=gt)
    out = _with(loaded, recipe, ctl)
    assert all(not s for s in ctl.cached_steps.values())
    assert torch.equal(out.latents, prof["latents"])
    # errors were measured for every interior step of every branch, in [0, inf)
    for b in loaded.backbone.branches:
        assert sorted(ctl.errors[b]) == list(range(1, T - 1))
    # a huge lambda caches every interior step (so the test above can fail)
    big = SearchController(T, 1e30, gt_norms=gt)
    _with(loaded, recipe, big)
    for b in loaded.backbone.branches:
        assert big.cached_steps[b] == list(range(1, T - 1))
        assert big.nfe[b] == 2


# ---------------------------------------------------------------- NFE

def test_counted_nfe_per_branch(tiny_wan, wan_profile):
    loaded, recipe = tiny_wan
    T = recipe.sampling.steps
    cached = {"cond": {1, 2, 4}, "uncond": {3}}
    ctl = ApplyController(T, cached=cached)
    out = _with(loaded, recipe, ctl)
    assert dict(ctl.nfe) == {"cond": T - 3, "uncond": T - 1}
    assert dict(ctl.n_cached) == {"cond": 3, "uncond": 1}
    assert sum(ctl.nfe.values()) == sum(T - len(s) for s in cached.values())
    assert not torch.equal(out.latents, wan_profile["latents"])  # caching did change the output


# ---------------------------------------------------------------- reference loop

def _capture_calls(loaded, recipe):
    """Uncached pipeline run; the transformer's keyword arguments of every call (and the sigmas used)."""
    calls = []

    def pre(module, args, kwargs):
        assert not args
        calls.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    h = loaded.pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        out = _plain(loaded, recipe)
    finally:
        h.remove()
    return calls, loaded.pipe.scheduler.sigmas.clone(), out.latents


def _reference_hidden(loaded, calls, sigmas, S):
    """Plain residual caching in hidden space on S, with torch hooks and an explicit Euler loop (one branch)."""
    tr = loaded.pipe.transformer
    blocks = [*tr.transformer_blocks, *tr.single_transformer_blocks]
    box = {}

    def head(module, args, kwargs):
        box["h_in"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def tail(module, args, kwargs, out):
        enc, hid = out  # Flux blocks return (encoder_hidden_states, hidden_states)
        if box["skip"]:
            return enc, box["h_in"] + box["R"]
        box["R"] = hid - box["h_in"]
        return None

    hooks = [blocks[0].register_forward_pre_hook(head, with_kwargs=True),
             blocks[-1].register_forward_hook(tail, with_kwargs=True)]
    try:
        x = calls[0]["hidden_states"]
        with torch.no_grad():
            for k, kw in enumerate(calls):
                box["skip"] = k in S
                v = tr(**{**kw, "hidden_states": x})[0]
                x = (x.float() + (sigmas[k + 1] - sigmas[k]) * v).to(v.dtype)
    finally:
        for h in hooks:
            h.remove()
    return x


def _reference_latent(loaded, calls, sigmas, S):
    """The paper's literal loop: r = v - x on computed steps, v~ = x + r on cached ones (no model call)."""
    tr = loaded.pipe.transformer
    x = calls[0]["hidden_states"]
    n_calls, r = 0, None  # r: the residual of the last computed step (step 0 always computes)
    with torch.no_grad():
        for k, kw in enumerate(calls):
            if k in S:
                v = x + r
            else:
                v = tr(**{**kw, "hidden_states": x})[0]
                r = v - x
                n_calls += 1
            x = (x.float() + (sigmas[k + 1] - sigmas[k]) * v).to(v.dtype)
    return x, n_calls


@pytest.mark.parametrize("S", [{2}, {1, 3, 4}, {2, 3}])
def test_apply_equals_reference_loop_hidden(tiny_flux, S):
    loaded, recipe = tiny_flux
    T = recipe.sampling.steps
    calls, sigmas, plain = _capture_calls(loaded, recipe)
    assert len(calls) == T
    # the reference loop with nothing cached reproduces the pipeline (checks the loop itself)
    assert torch.equal(_reference_hidden(loaded, calls, sigmas, set()), plain)
    want = _reference_hidden(loaded, calls, sigmas, S)
    assert not torch.equal(want, plain)
    ctl = ApplyController(T, cached={"cond": S})
    got = _with(loaded, recipe, ctl).latents
    assert ctl.nfe["cond"] == T - len(S)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("S", [{2}, {1, 3, 4}])
def test_apply_equals_reference_loop_latent(tiny_flux, S):
    loaded, recipe = tiny_flux
    T = recipe.sampling.steps
    calls, sigmas, plain = _capture_calls(loaded, recipe)
    x0, n0 = _reference_latent(loaded, calls, sigmas, set())
    assert torch.equal(x0, plain) and n0 == T
    want, n = _reference_latent(loaded, calls, sigmas, S)
    ctl = ApplyController(T, cached={"cond": S}, residual="latent")
    got = _with(loaded, recipe, ctl).latents
    assert ctl.nfe["cond"] == n == T - len(S)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------- fit, then replay the plan

def _fit_and_replay(loaded, recipe, prof, cached, granularity, adjust=True, rectify_on=True, form="linear"):
    T = recipe.sampling.steps
    base = prof["sigmas"]
    cd = loaded.backbone.channel_dim
    fit = FitController(T, cached, profile_dv={b: r["dv"] for b, r in prof["stats"].items()}, base_sigmas=base,
                        adjust=adjust, rectify_on=rectify_on, form=form, granularity=granularity, channel_dim=cd)
    fitted = _with(loaded, recipe, fit)
    schedule = LiveSchedule(base, fixed=fit.schedule.sigmas) if adjust else None
    coeffs = {b: dict(d) for b, d in fit.coeffs.items()}
    app = ApplyController(T, cached=cached, coeffs=coeffs, form=form, granularity=granularity, channel_dim=cd,
                          schedule=schedule)
    replayed = _with(loaded, recipe, app)
    return fit, app, fitted, replayed


@pytest.mark.parametrize("granularity", ["scalar", "channel", "element"])
def test_fitted_plan_replays_exactly_flux(tiny_flux, flux_profile, granularity):
    loaded, recipe = tiny_flux
    T = recipe.sampling.steps
    S = {2, 3}
    fit, app, fitted, replayed = _fit_and_replay(loaded, recipe, flux_profile, {"cond": S}, granularity)
    assert torch.equal(replayed.latents, fitted.latents)
    # the fit did adjust and rectify (so the replay is a real check)
    sig = fit.schedule.sigmas
    assert sig[0] == flux_profile["sigmas"][0] and sig[-1] == 0.0
    assert all(sig[k + 1] <= sig[k] for k in range(T))
    assert sig != flux_profile["sigmas"]
    assert set(fit.phis()) == S and all(0.0 <= p <= 1.0 for p in fit.phis().values())
    assert set(fit.coeffs["cond"]) == S
    shape = coeff_shape(torch.Size(app.shapes["cond"]), granularity, loaded.backbone.channel_dim)
    for a, b in fit.coeffs["cond"].values():
        assert tuple(a.shape) == tuple(b.shape) == shape and a.dtype == torch.float64
    # the run sampled with the adjusted sigmas
    torch.testing.assert_close(torch.tensor(fitted.sigmas), torch.tensor(sig, dtype=torch.float32))
    assert app.nfe["cond"] == T - len(S) and fit.nfe["cond"] == T - len(S)
    assert not torch.equal(fitted.latents, flux_profile["latents"])


def test_fitted_plan_replays_exactly_wan_two_branches(tiny_wan, wan_profile):
    loaded, recipe = tiny_wan
    T = recipe.sampling.steps
    cached = {"cond": {2, 3}, "uncond": {3, 4}}
    fit, app, fitted, replayed = _fit_and_replay(loaded, recipe, wan_profile, cached, "channel")
    assert torch.equal(replayed.latents, fitted.latents)
    assert set(fit.phis()) == {2, 3, 4}
    assert sorted(fit.phi_branches[3]) == ["cond", "uncond"]
    assert {b: set(d) for b, d in fit.coeffs.items()} == cached
    assert fit.schedule.sigmas != wan_profile["sigmas"] and fit.schedule.sigmas[-1] == 0.0
    assert dict(app.nfe) == {"cond": T - 2, "uncond": T - 2}


def test_fit_adjust_only_replays_exactly_wan(tiny_wan, wan_profile):
    loaded, recipe = tiny_wan
    cached = {"cond": {1, 3}, "uncond": {2}}
    fit, app, fitted, replayed = _fit_and_replay(loaded, recipe, wan_profile, cached, "scalar", rectify_on=False)
    assert not fit.coeffs or all(not d for d in fit.coeffs.values())
    assert torch.equal(replayed.latents, fitted.latents)


def test_fit_without_adjust_or_rectify_is_plain_caching(tiny_flux):
    loaded, recipe = tiny_flux
    T = recipe.sampling.steps
    prof = {"stats": {"cond": {"dv": [1.0] * T}}, "sigmas": [0.0] * (T + 1)}
    cached = {"cond": {1, 3}}
    fit, app, fitted, replayed = _fit_and_replay(loaded, recipe, prof, cached, "scalar",
                                                 adjust=False, rectify_on=False)
    assert fit.schedule is None
    assert torch.equal(fitted.latents, replayed.latents)


# ---------------------------------------------------------------- scheduler check

def test_adjustment_refused_for_non_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from ertacli.engine import AdjustmentRefused

    with pytest.raises(AdjustmentRefused, match="UniPCMultistepScheduler"):
        check_adjustable(UniPCMultistepScheduler())
    with pytest.raises(AdjustmentRefused):
        check_adjustable(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))
    check_adjustable(FlowMatchEulerDiscreteScheduler(shift=3.0))


def test_refused_adjustment_leaves_no_hooks(tiny_flux, flux_profile):
    """Session refuses a planned schedule on a non-Euler scheduler, and leaves the pipeline as it found it."""
    from diffusers import UniPCMultistepScheduler

    from ertacli.engine import AdjustmentRefused

    loaded, recipe = tiny_flux
    T = recipe.sampling.steps
    original = loaded.pipe.scheduler
    loaded.pipe.scheduler = UniPCMultistepScheduler()
    try:
        ctl = ApplyController(T, cached={"cond": {2}}, schedule=LiveSchedule(flux_profile["sigmas"]))
        with pytest.raises(AdjustmentRefused):
            with LoadedSession(loaded, ctl):
                pass
        assert type(loaded.pipe.scheduler) is UniPCMultistepScheduler
    finally:
        loaded.pipe.scheduler = original
    try:
        _no_ertacache_hooks(loaded.pipe.transformer)
        assert torch.equal(_plain(loaded, recipe).latents, flux_profile["latents"])
    finally:  # keep the shared pipeline clean for the other tests even when this one fails
        from ertacli.engine import remove_ertacache

        remove_ertacache(loaded.pipe.transformer)


@pytest.mark.parametrize("name", ["tiny_flux", "tiny_wan"])
def test_micro_batches_keep_decisions_and_outputs(name, request):
    """Splitting transformer calls into micro-batches keeps the search decisions and (nearly) the outputs."""
    loaded, recipe = request.getfixturevalue(name)
    prompts, seeds = ["a seven", "a two", "a four"], [0, 1, 2]
    T = recipe.sampling.steps
    rec = RecordController(T)
    with LoadedSession(loaded, rec) as s:
        s.run_batch(recipe, prompts, seeds)
    gt = {b: v["R"] for b, v in rec.stats.items()}
    outs, plans = [], []
    for mb in (0, 2):
        ctl = SearchController(T, 0.5, gt)
        with LoadedSession(loaded, ctl, micro_batch=mb) as s:
            outs.append(s.run_batch(recipe, prompts, seeds).latents)
        plans.append(dict(ctl.cached_steps))
    assert plans[0] == plans[1] and any(plans[0].values())
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


# ---------------------------------------------------------------- where a pipeline call starts (CallClock)

class _Ctl:
    """A controller stand-in: T steps, counts begin() calls."""

    def __init__(self, T):
        self.T, self.begun = T, 0

    def begin(self):
        self.begun += 1


def _ticks(clock, calls):
    return [clock.tick(stream, p) for stream, p in calls]


def _t(t):
    from ertacli.engine.config import Progress

    return Progress(None, False, t)


def _i(i, t=None):
    from ertacli.engine.config import Progress

    return Progress(i, True, t)


def test_call_clock_from_timesteps_two_streams():
    """CFG streams share a timestep per step; the timestep going back up starts a new call (once, for all)."""
    from ertacli.engine import CallClock

    ctl = _Ctl(3)
    clock = CallClock(ctl)
    one = [(b, _t(t)) for t in (900.0, 500.0, 100.0) for b in ("cond", "uncond")]
    assert _ticks(clock, one + one + one[:4] + one) == [1] * 6 + [2] * 6 + [3] * 4 + [4] * 6
    assert ctl.begun == 4  # the third call was abandoned after two steps and the fourth still starts afresh
    assert clock.direction == -1


def test_call_clock_rising_timesteps():
    """Lumina2 passes 1 - t: a timestep rising through the call. Three calls are three, with steps 0, 1, 2 each."""
    from ertacli.engine import CallClock

    ctl = _Ctl(3)
    clock = CallClock(ctl)
    seen = []
    for _ in range(3):
        for t in (0.0, 0.4, 0.8):
            for b in ("cond_uncond", "call1"):
                seen.append((clock.tick(b, _t(t)), clock.steps(b) - 1))
    assert seen == [(c, k) for c in (1, 2, 3) for k in (0, 1, 2) for _ in range(2)]
    assert ctl.begun == 3 and clock.direction == 1
    # a call abandoned after two steps: the next call still starts afresh, in the learned direction
    assert _ticks(clock, [("cond_uncond", _t(0.0)), ("cond_uncond", _t(0.4)), ("cond_uncond", _t(0.0))]) == [4, 4, 5]


def test_call_clock_scheduler_index_over_timesteps():
    """The scheduler's step index decides where the timestep does not: timesteps in no order, -1 before step one."""
    from ertacli.engine import CallClock
    from ertacli.engine.config import Progress

    clock = CallClock(_Ctl(4))
    ts = (0.5, 0.9, 0.1, 0.7)  # not monotone in either direction
    call = [(b, Progress(i if i else -1, i == 0, t)) for i, t in enumerate(ts) for b in ("cond", "uncond")]
    assert _ticks(clock, call + call + call[:2] + call) == [1] * 8 + [2] * 8 + [3] * 2 + [4] * 8
    assert clock.direction is None  # the index always decided


def test_call_clock_step_index_and_two_transformers():
    """Wan2.2-style experts: streams high/* then low/* in one call, step indices going on; repeats restart."""
    from ertacli.engine import CallClock

    ctl = _Ctl(4)
    clock = CallClock(ctl)
    call = [(f"{'high' if i < 2 else 'low'}/{b}", _i(i)) for i in range(4) for b in ("cond", "uncond")]
    assert _ticks(clock, call + call) == [1] * 8 + [2] * 8
    # a one-step loop that gives its step index: every call is a new one
    assert _ticks(CallClock(_Ctl(1)), [("cond", _i(0))] * 3) == [1, 2, 3]


def test_progress_of_a_call():
    """The step index when the pipeline gives one, else the scheduler's; the mean timestep (per-token too)."""
    from types import SimpleNamespace

    from ertacli.engine.config import Progress, progress_of

    per_token = torch.tensor([[0.0, 700.0, 700.0], [0.0, 700.0, 700.0]])  # Wan2.2 TI2V: first frame at t=0
    assert progress_of(None, {"timestep": per_token}) == Progress(None, False, pytest.approx(1400 / 3))
    assert progress_of(None, {"timestep": 500}) == Progress(None, False, 500.0)
    assert progress_of(3, {"timestep": torch.tensor([500.0])}) == Progress(3, True, 500.0)
    assert progress_of(None, {}) is None
    fresh, stepped = SimpleNamespace(step_index=None), SimpleNamespace(step_index=2)
    assert progress_of(None, {"timestep": 500}, fresh) == Progress(-1, True, 500.0)
    assert progress_of(None, {}, stepped) == Progress(2, False, None)
    assert progress_of(None, {"timestep": 500}, SimpleNamespace()) == Progress(None, False, 500.0)  # keeps none


def test_call_clock_without_progress_counts_steps():
    """No timestep or step index: a stream's T calls make a pipeline call; equal timesteps do not restart."""
    from ertacli.engine import CallClock

    assert _ticks(CallClock(_Ctl(2)), [("default", None)] * 5) == [1, 1, 2, 2, 3]
    assert _ticks(CallClock(_Ctl(2)), [("default", _t(1.0))] * 3) == [1, 1, 1]  # the controller refuses k=2
    clock = CallClock(_Ctl(2))
    _ticks(clock, [("default", _t(1.0))])
    clock.end()  # diffusers' reset (or Session.fresh)
    assert _ticks(clock, [("default", _t(1.0))]) == [2]


def test_private_helpers_still_behave(tiny_flux):
    """The diffusers/torch pieces engine/diffusers_compat.py relies on: fails here first when an upgrade moves them."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    from ertacli.engine.diffusers_compat import StreamStates, block_layout, unwrap, user_compiled
    from ertacli.engine.hooks import BranchState, StepHook

    pair, single = block_layout(FluxTransformerBlock), block_layout(FluxSingleTransformerBlock)
    assert (pair.hidden_arg, pair.hidden_index, pair.encoder_index) == ("hidden_states", 1, 0)
    assert pair.params[:2] == ("hidden_states", "encoder_hidden_states")
    assert (single.hidden_index, single.encoder_index) == (1, 0)
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from ertacli.engine.diffusers_compat import block_output

    h, e, h2 = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    out = block_output(TransformerBlockRegistry.get(FluxTransformerBlock), (h, e), {}, h2)
    assert out[0] is e and out[1] is h2
    assert pair.output((h, e), {}, h2) == out and pair.hidden_of(out) is h2
    # cache_context hands its CacheContext (name, step_index) to the StateManager of a stateful hook
    loaded, _ = tiny_flux
    tr = loaded.pipe.transformer
    from diffusers.hooks import HookRegistry

    from ertacli.engine import ApplyController, ErtaCacheConfig

    states = StreamStates(BranchState, "default", "high/")
    reg = HookRegistry.check_if_exists_or_initialize(tr)
    reg.register_hook(StepHook(states, ErtaCacheConfig(ApplyController(2, {}))), "ertacache_probe")
    try:
        with tr.cache_context("uncond", step_index=3):
            assert (states.stream, states.step_index) == ("high/uncond", 3)
        assert (states.stream, states.step_index) == ("high/default", None)
    finally:
        reg.remove_hook("ertacache_probe")
    assert not user_compiled(tr)
    wrapped = torch.compile(tr, backend="eager")
    assert user_compiled(wrapped) and unwrap(wrapped) is tr
    block = torch.nn.Linear(2, 2)  # not the shared pipeline's: .compile() cannot be undone publicly
    assert not user_compiled(block)
    block.compile(backend="eager")
    assert user_compiled(block)


def test_sd3_three_cached_calls_without_diffusers_reset(tmp_path):
    """SD3's transformer has no diffusers cache-mixin reset: three cached API calls give the same output and NFE."""
    import ertacli
    from diffusers.models.cache_utils import CacheMixin

    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe("sd3", ["model.source=tiny", "model.dtype=float32", "sampling.steps=6",
                                    "sampling.height=32", "sampling.width=32"])
    loaded = load_pipeline(recipe, "cpu")
    assert not isinstance(loaded.pipe.transformer, CacheMixin)  # else this test checks nothing new
    encode = lambda prompts: loaded.encoder.pipeline_kwargs(list(prompts), "")
    settings = dict(num_inference_steps=6, height=32, width=32, guidance_scale=4.0)
    plan = ertacli.calibrate(loaded.pipe, ["a red circle", "two blue squares"], seeds=[0], nfe=4, method="ertacache",
                             prompt_encoder=encode, **settings)
    assert plan.nfe == 4

    def call():
        return loaded.pipe(**settings, output_type="latent", generator=torch.Generator("cpu").manual_seed(0),
                           **encode(["a red circle"])).images

    plain = call()
    with ertacli.cached(loaded.pipe, plan):
        outs, nfes = [], []
        for _ in range(3):
            outs.append(call())
            nfes.append(ertacli.last_call_stats(loaded.pipe)["nfe_per_branch"])
    assert nfes == [{"cond_uncond": 4}] * 3
    assert all(torch.equal(o, outs[0]) for o in outs) and not torch.equal(outs[0], plain)
    assert torch.equal(call(), plain)


def test_two_denoisers_prefixed_streams_share_one_clock(tiny_flux):
    """Session(denoisers=...) hooks every listed transformer with its stream prefix, one controller and one clock;
    the second transformer (a copy here, called by hand inside the pipeline's call) counts as its own stream."""
    import copy

    loaded, recipe = tiny_flux
    pipe, T = loaded.pipe, recipe.sampling.steps
    second = copy.deepcopy(pipe.transformer)
    pipe.transformer_2 = second
    seen = []

    def also_second(module, args, kwargs, out):  # what a two-expert pipeline would do: call the other denoiser
        with second.cache_context("cond"):
            seen.append(second(**kwargs)[0])

    ctl = ApplyController(T, cached={"high/cond": {2}, "low/cond": {3}})
    session = Session(pipe, loaded.backbone, ctl, denoisers=(("transformer", "high/"), ("transformer_2", "low/")))
    handle = pipe.transformer.register_forward_hook(also_second, with_kwargs=True)
    try:
        with session:
            session.fresh()
            _plain(loaded, recipe)
            assert dict(ctl.nfe) == {"high/cond": T - 1, "low/cond": T - 1}
            assert dict(ctl.n_cached) == {"high/cond": 1, "low/cond": 1}
            assert session.configs[0].clock is session.configs[1].clock and session.configs[1].clock.call == 1
            _plain(loaded, recipe)  # a second pipeline call: one new clock tick, the same counts
            assert session.configs[0].clock.call == 2 and dict(ctl.nfe) == {"high/cond": T - 1, "low/cond": T - 1}
    finally:
        handle.remove()
        del pipe.transformer_2
    _no_ertacache_hooks(second)
    _no_ertacache_hooks(pipe.transformer)
    assert len(seen) == 2 * T
