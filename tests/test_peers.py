"""The peers we add (TeaCache, EasyCache, SeaCache, cache-dit, SmoothCache): off is exactly uncached, one property
each paper states, TeaCache's fit, NFE counting. Tiny random pipelines, seconds each."""

from __future__ import annotations

import pytest
import torch

from conftest import STEPS
from ertacli.backbones.sampler import Sampler
from ertacli.evaluation.peers import PEERS, NfeCounter, enabled, last_block, why_missing

PROMPT, SEED = "a red circle", 0
OFF = {"TeaCache": 0.0, "EasyCache": (0.0, 1), "SeaCache": (0.0, 2), "cache-dit DBCache": (0.0, 1),
       "cache-dit DBCache+TaylorSeer": (0.0, 1), "SmoothCache": 0.0}


def sampler_of(loaded_recipe) -> Sampler:
    loaded, recipe = loaded_recipe
    return Sampler.from_recipe(loaded, recipe)


def run_peer(s: Sampler, name: str, setting, extra: dict | None = None, prompt: str = PROMPT, seed: int = SEED):
    """(latents, NFE) of one sample with the peer attached at `setting`."""
    peer = PEERS[name]
    extra = {"block_lists": s.backbone.block_lists, "teacache": {"coefficients": [1.0, 0.0]}, **(extra or {})}
    if peer.calibrate is not None and not any(k in extra for k in ("mag_ratios", "smoothcache_curves")):
        extra.update(peer.calibrate(s, type("P", (), {"prompts": [prompt], "seeds": [seed]})()))
    with enabled(s.pipe, peer.build(s.steps, setting, s.pipe, extra)):
        with NfeCounter.of(s.pipe, s.backbone.block_lists) as c:
            out = s.run([prompt], [seed])
    return out.latents, c.calls


def needs(name: str) -> None:
    reason = why_missing(name)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("model", ["tiny_flux", "tiny_wan"])
@pytest.mark.parametrize("name", list(OFF))
def test_off_setting_is_exactly_uncached(name, model, request):
    needs(name)
    s = sampler_of(request.getfixturevalue(model))
    if name == "SmoothCache" and model == "tiny_wan":
        with pytest.raises(ValueError, match="not per CFG branch"):
            run_peer(s, name, OFF[name])
        return
    base = s.run([PROMPT], [SEED]).latents
    latents, nfe = run_peer(s, name, OFF[name])
    assert torch.equal(latents, base)
    assert nfe == STEPS * (2 if model == "tiny_wan" else 1)


def test_registry_names_every_new_peer_and_why_it_cannot_run():
    for name in OFF:
        assert name in PEERS
        reason = why_missing(name)
        assert reason is None or "pip install" in reason or "diffusers" in reason


# ---- TeaCache ----------------------------------------------------------------------------------------------------

def test_teacache_accumulator_resets_when_it_recomputes(tiny_flux):
    from ertacli.evaluation.teacache import TeaCacheConfig

    s, trace, record = sampler_of(tiny_flux), [], []
    cfg = TeaCacheConfig(threshold=0.12, num_inference_steps=STEPS, block_lists=s.backbone.block_lists,
                         coefficients=(1.0, 0.0), trace=trace, record=record)  # poly(x) = x
    with enabled(s.pipe, cfg), NfeCounter(s.transformer, last_block(s.transformer, s.backbone.block_lists)) as c:
        s.run([PROMPT], [SEED])
    x_rel = {step: x for _, step, x, _ in record}
    computed = [t[2] for t in trace]
    assert c.calls == sum(computed) and 1 < c.calls < STEPS  # NFE: the computed calls, nothing else
    acc = 0.0
    assert trace[0][2] and trace[-1][2]  # the first and the last step are always computed
    for _, k, was_computed, seen in trace[1:-1]:
        acc += x_rel[k]  # the accumulator only ever adds the rescaled distance ...
        assert seen == pytest.approx(acc, rel=1e-12, abs=1e-15)
        if was_computed:
            assert seen >= 0.12
            acc = 0.0  # ... and restarts from 0 after a computed call
        else:
            assert seen < 0.12


def test_teacache_fit_returns_a_known_polynomial():
    from ertacli.evaluation.teacache_fit import fit_polynomial

    true = [3.0, -2.0, 0.5, 1.5, 0.01]
    x = [0.01 * i for i in range(1, 30)]
    y = [sum(c * xi ** (4 - j) for j, c in enumerate(true)) for xi in x]
    fit = fit_polynomial(x, y)
    assert fit["degree"] == 4 and fit["points"] == 29
    assert fit["coefficients"] == pytest.approx(true, rel=1e-6, abs=1e-8)
    assert fit["r2"] == pytest.approx(1.0) and fit["rms_residual"] < 1e-10


def test_teacache_fit_is_bit_reproducible(tiny_wan):
    from ertacli.calibration.samples import Samples
    from ertacli.evaluation.teacache_fit import fit_teacache

    s, samples = sampler_of(tiny_wan), Samples(["a red circle", "two blue squares"], [0, 1])
    first, records = fit_teacache(s, samples)
    again, _ = fit_teacache(s, samples)
    assert first == again
    assert {r[0] for r in records} == {"cond", "uncond"} and len(records) == 2 * 2 * (STEPS - 1)


# ---- EasyCache ---------------------------------------------------------------------------------------------------

def test_easycache_skipped_call_reuses_the_last_transformation(tiny_flux):
    """A skipped call returns its input plus Δ = v - x of the last computed call; its accumulator stays below τ."""
    from ertacli.evaluation.easycache import EasyCacheConfig

    s, trace, calls = sampler_of(tiny_flux), [], []

    def grab(module, args, kwargs, out):
        calls.append((kwargs["hidden_states"].clone(), out[0].clone()))

    cfg = EasyCacheConfig(threshold=0.3, warmup=1, num_inference_steps=STEPS, trace=trace)
    with enabled(s.pipe, cfg):
        handle = s.transformer.register_forward_hook(grab, with_kwargs=True)
        try:
            s.run([PROMPT], [SEED])
        finally:
            handle.remove()
    assert not all(t[2] for t in trace)
    delta = None
    for (x, v), (_, k, computed, acc, _) in zip(calls, trace):
        if computed:
            delta = v - x
        else:
            assert acc < 0.3 and torch.equal(v, x + delta)


def test_easycache_nfe_counts_computed_calls(tiny_wan):
    from ertacli.evaluation.easycache import EasyCacheConfig

    s, trace = sampler_of(tiny_wan), []
    cfg = EasyCacheConfig(threshold=0.3, warmup=2, num_inference_steps=STEPS, trace=trace)
    with enabled(s.pipe, cfg), NfeCounter(s.transformer, last_block(s.transformer, s.backbone.block_lists)) as c:
        s.run([PROMPT], [SEED])
    assert c.calls == sum(t[2] for t in trace) < 2 * STEPS
    assert all(t[2] for t in trace if t[1] < 2 or t[1] == STEPS - 1)  # warm-up and last step always computed


# ---- SeaCache ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny_flux", "tiny_wan"])
def test_seacache_caps_consecutive_cached_calls(model, request):
    """max_consecutive_cached: never more cached calls in a row per stream (the Flux adapter makes it gate at all)."""
    from conftest import _load

    s = sampler_of(_load(request.getfixturevalue(model)[1].name))  # its own pipeline: cache-dit leaves traces on one
    tail, flags = last_block(s.transformer, s.backbone.block_lists), []
    handles = [s.transformer.register_forward_pre_hook(lambda *a: flags.append(False)),
               next(iter(tail.children())).register_forward_hook(lambda *a: flags.__setitem__(-1, True))]
    steps, streams = 12, 2 if model == "tiny_wan" else 1
    s.call_kwargs = {**s.call_kwargs, "num_inference_steps": steps}
    try:
        with enabled(s.pipe, PEERS["SeaCache"].build(steps, (1e9, 2), s.pipe, {})):
            s.run([PROMPT], [SEED])
    finally:
        for h in handles:
            h.remove()
    for b in range(streams):
        ran = flags[b::streams]
        assert ran[0] and ran[-1]  # retention step and end step computed
        runs = "".join("c" if r else "." for r in ran).split("c")
        assert max(len(r) for r in runs) == 2  # an unbounded threshold caches exactly the cap in a row


# ---- cache-dit ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cache-dit DBCache", "cache-dit DBCache+TaylorSeer"])
def test_cache_dit_runs_first_block_every_call(tiny_flux, name):
    """DBCache F1B0: the first block (its Fn compute block) runs on every call, the last only on computed ones."""
    needs(name)
    s = sampler_of(tiny_flux)
    first = s.transformer.transformer_blocks[0]
    n_first = []
    handle = next(iter(first.children())).register_forward_hook(lambda *a: n_first.append(1))
    try:
        _, nfe = run_peer(s, name, (5.0, 1))
    finally:
        handle.remove()
    assert len(n_first) == STEPS and nfe < STEPS


def test_cache_dit_taylorseer_is_not_plain_reuse(tiny_flux):
    needs("cache-dit DBCache")
    s = sampler_of(tiny_flux)
    s.call_kwargs = {**s.call_kwargs, "num_inference_steps": 20}  # enough computed steps for its derivatives
    plain, n1 = run_peer(s, "cache-dit DBCache", (0.3, 1))
    taylor, n2 = run_peer(s, "cache-dit DBCache+TaylorSeer", (0.3, 1))
    assert n1 == n2 and not torch.equal(plain, taylor)


# ---- SmoothCache -------------------------------------------------------------------------------------------------

def test_smoothcache_schedule_thresholds_accumulated_error():
    from ertacli.evaluation.smoothcache_peer import schedule

    got = schedule({"attn": [0.1, 0.1, 0.1, 0.5, 0.1]}, alpha=0.25, steps=6)
    assert got == {"attn": [1, 0, 0, 1, 1, 1]}  # 0.1, 0.2 < 0.25 cached; 0.3 computes; 0.5; last step computed
    assert schedule({"attn": [0.1] * 5}, alpha=0.0, steps=6) == {"attn": [1] * 6}


def test_smoothcache_cached_steps_reuse_layer_outputs(tiny_flux):
    needs("SmoothCache")
    s = sampler_of(tiny_flux)
    base = s.run([PROMPT], [SEED]).latents
    latents, nfe = run_peer(s, "SmoothCache", 0.5)
    assert nfe == STEPS and not torch.equal(latents, base)  # sub-layers cached, every call runs its blocks
    again, _ = run_peer(s, "SmoothCache", 0.5)
    assert torch.equal(latents, again)  # the helper's step counters restart with each pipeline call


def test_fastercache_runs_on_tiny_flux_and_says_why_not_per_cfg_branch(tiny_flux, tiny_wan):
    """diffusers' FasterCache fails on its first call when the first step lies inside its reuse range (nothing
    cached yet); our grid keeps that step outside. It reuses attention only, so every call still counts."""
    needs("FasterCache")
    s = sampler_of(tiny_flux)
    base = s.run([PROMPT], [SEED]).latents
    latents, nfe = run_peer(s, "FasterCache", (2, 901))
    assert nfe == STEPS and not torch.equal(latents, base)
    assert all(top < 1000 for _, top in PEERS["FasterCache"].grid)
    with pytest.raises(ValueError, match="once per branch"):
        run_peer(sampler_of(tiny_wan), "FasterCache", (2, 901))


def test_a_peer_that_cannot_reach_the_target_says_so(tiny_flux):
    """FasterCache computes every call: at a target below T no setting matches, and the row says so instead of
    showing a run with more NFE."""
    from ertacli.calibration.samples import Samples
    from ertacli.evaluation.peer_tuning import probe_refs, tune_peer

    needs("FasterCache")
    s = sampler_of(tiny_flux)
    probe = Samples([PROMPT], [SEED])
    refs = probe_refs(s, probe, "hidden")
    tuned = tune_peer(s, "FasterCache", STEPS - 2, probe, refs, {"block_lists": s.backbone.block_lists})
    assert tuned["setting"] is None
    assert tuned["unreached"] == f"no setting reaches NFE <= {STEPS - 2} (fewest in its grid of 6: NFE {STEPS})"
    assert tune_peer(s, "FasterCache", STEPS, probe, refs, {"block_lists": s.backbone.block_lists})["matched"] == 6


def test_teacache_note_names_its_fit_run_not_a_path(monkeypatch):
    from pathlib import Path

    import ertacli.commands.teacache_fit as tf
    from ertacli.commands.eval import teacache_extra

    fit = {"input": "modulated input", "r2": 0.99, "points": 40, "coefficients": [1.0, 0.0]}
    path = Path("/tmp/somewhere/runs/tiny-flux/teacache-fit-20261206-1200/teacache.json")
    monkeypatch.setattr(tf, "find_or_make_teacache", lambda job: (fit, path))
    extra, note = teacache_extra(None)
    assert extra == {"teacache": fit} and "/" not in note
    assert note == "modulated input; coefficients from teacache-fit run teacache-fit-20261206-1200 (R2 0.990, 40 points)"


# ---- Wan2.2 MoE: every peer caches both experts (transformer, transformer_2) or refuses ---------------------------

MOE_STEPS = 10  # tiny Wan2.2 MoE at boundary_ratio 0.875: 3 high-noise steps, 7 low-noise (CFG: two calls a step)
MOE_OFF = {"FirstBlockCache": 0.0, "TaylorSeer": (1, MOE_STEPS, 0, 1), "PyramidAttentionBroadcast": 1, "MagCache": 0.0,
           "TeaCache": 0.0, "EasyCache": (0.0, 1), "SeaCache": (0.0, 2), "cache-dit DBCache": (0.0, 1),
           "cache-dit DBCache+TaylorSeer": (0.0, 1)}
MOE_ACTIVE = {"FirstBlockCache": 0.8, "TaylorSeer": (2, 1, 0, 1), "MagCache": 0.4, "TeaCache": 1.0, "EasyCache": (1.0, 1),
              "SeaCache": (1e9, 2), "cache-dit DBCache": (5.0, 1), "cache-dit DBCache+TaylorSeer": (5.0, 1)}
# FasterCache fails on every Wan transformer in diffusers 0.42.1 (its hook's cache is None on the first call), as
# on Wan2.1: not a Wan2.2 matter, so not listed here.


@pytest.fixture
def moe():
    """A Sampler on a fresh tiny Wan2.2 MoE (two experts of one class) and per-expert forward-call counts."""
    from ertacli.backbones import tiny_zoo
    from ertacli.backbones.discover import backbone_of

    t = tiny_zoo.build("wan2.2-moe")
    s = Sampler(t.pipe, backbone_of(t.pipe), t.encode, {**t.call, "num_inference_steps": MOE_STEPS})
    calls, ran = [0, 0], [0, 0]
    for i, expert in enumerate((t.pipe.transformer, t.pipe.transformer_2)):
        expert.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return s, calls, ran


def moe_extra(s, name: str = "") -> dict:
    """What the builds need; a peer with its own calibration (MagCache) runs it here."""
    extra = {"block_lists": s.backbone.block_lists, "teacache": {"coefficients": [1.0, 0.0]}}
    peer = PEERS.get(name)
    if peer is not None and peer.calibrate is not None:
        extra.update(peer.calibrate(s, type("P", (), {"prompts": [PROMPT], "seeds": [SEED]})()))
    return extra


@pytest.mark.parametrize("name", list(MOE_OFF))
def test_moe_off_setting_is_uncached_and_counts_both_experts(moe, name):
    needs(name)
    s, calls, _ = moe
    extra = moe_extra(s, name)
    calls[:] = [0, 0]
    base = s.run([PROMPT], [SEED]).latents
    assert calls[0] > 0 and calls[1] > 0 and sum(calls) == 2 * MOE_STEPS  # both experts denoise this call
    calls[:] = [0, 0]
    with enabled(s.pipe, PEERS[name].build(MOE_STEPS, MOE_OFF[name], s.pipe, extra)):
        with NfeCounter.of(s.pipe, s.backbone.block_lists) as c:
            latents = s.run([PROMPT], [SEED]).latents
    assert torch.equal(latents, base)
    assert c.by_denoiser == calls and c.calls == 2 * MOE_STEPS  # every call of both experts counted


@pytest.mark.parametrize("name", list(MOE_ACTIVE))
def test_moe_active_setting_caches_and_counts_both_experts(moe, name):
    """The eval path (PeerRunner): each expert computes some calls and caches others, and the NFE counted is the
    number of calls, over both experts, in which the expert's last block ran (measured here by our own hooks)."""
    from ertacli.evaluation.runners import PeerRunner

    needs(name)
    s, calls, ran = moe
    extra = moe_extra(s, name)
    base = s.run([PROMPT], [SEED]).latents
    calls[:] = [0, 0]
    experts = (s.pipe.transformer, s.pipe.transformer_2)
    with PeerRunner(s, name, MOE_ACTIVE[name], extra) as m:
        handles = []
        for i, expert in enumerate((s.pipe.transformer, s.pipe.transformer_2)):  # cache-dit: its copies
            tail = next(iter(last_block(expert, s.backbone.block_lists).children()))
            handles.append(tail.register_forward_hook(lambda *a, i=i: ran.__setitem__(i, ran[i] + 1)))
        try:
            out, nfe, _ = m.run(PROMPT, SEED)
        finally:
            for h in handles:
                h.remove()
        per_expert = list(m.counter.by_denoiser)
    assert not torch.equal(out.latents, base)
    assert nfe == sum(ran) == sum(per_expert) and per_expert == ran
    for i in (0, 1):  # each expert hooked: its first call computed, some later ones cached
        assert 0 < per_expert[i] < calls[i]
    assert out.transformer_seconds > 0
    assert (s.pipe.transformer, s.pipe.transformer_2) == experts  # the pipeline's own experts back in place
    assert torch.equal(s.run([PROMPT], [SEED]).latents, base)  # and nothing left attached to either


def test_moe_attention_reuse_runs_every_call_of_both_experts(moe):
    s, calls, _ = moe
    base = s.run([PROMPT], [SEED]).latents
    calls[:] = [0, 0]
    config = PEERS["PyramidAttentionBroadcast"].build(MOE_STEPS, 2, s.pipe, {})
    with enabled(s.pipe, config), NfeCounter.of(s.pipe, s.backbone.block_lists) as c:
        assert s.pipe.transformer.is_cache_enabled and s.pipe.transformer_2.is_cache_enabled
        latents = s.run([PROMPT], [SEED]).latents
    assert not torch.equal(latents, base) and c.by_denoiser == calls
    assert not s.pipe.transformer.is_cache_enabled and not s.pipe.transformer_2.is_cache_enabled


@pytest.mark.parametrize("peer", ["TeaCache", "EasyCache"])
def test_moe_own_hooks_keep_the_pipeline_step(moe, peer):
    """One state per expert, on the pipeline's step: the run's last step is computed in the low-noise expert."""
    from ertacli.evaluation.easycache import EasyCacheConfig
    from ertacli.evaluation.teacache import TeaCacheConfig

    s, calls, _ = moe
    trace = []
    config = (TeaCacheConfig(threshold=1e9, num_inference_steps=MOE_STEPS, block_lists=s.backbone.block_lists,
                             trace=trace) if peer == "TeaCache"
              else EasyCacheConfig(threshold=1e9, warmup=1, num_inference_steps=MOE_STEPS, trace=trace))
    with enabled(s.pipe, config), NfeCounter.of(s.pipe, s.backbone.block_lists) as c:
        s.run([PROMPT], [SEED])
    steps = [t[1] for t in trace]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == MOE_STEPS - 1 and len(trace) == sum(calls)
    assert all(t[2] for t in trace if t[1] == MOE_STEPS - 1)
    assert c.by_denoiser[1] < calls[1] and c.calls == sum(t[2] for t in trace)


def test_moe_magcache_calibrates_each_expert(moe):
    """MagCache's ratios per expert, one per step the expert runs (its calls / the two CFG calls of a step); ratios
    calibrated on one transformer are refused on the two experts."""
    from ertacli.errors import UserError
    from ertacli.evaluation.peers import mag_ratios

    s, calls, _ = moe
    ratios = mag_ratios(s, PROMPT, SEED)
    assert [len(r) for r in ratios] == [calls[0] // 4, calls[1] // 4]  # two runs: steps counted, then calibrated
    assert all(r[0] == 1.0 for r in ratios)  # each expert's first call: MagCache's neutral ratio
    with pytest.raises(UserError, match=r"^MagCache cannot cache every denoiser: WanPipeline holds 2 denoisers"):
        PEERS["MagCache"].build(MOE_STEPS, 0.4, s.pipe, {"mag_ratios": [1.0] * MOE_STEPS})


@pytest.mark.parametrize("name", ["SmoothCache"])
def test_moe_peer_that_cannot_cache_both_experts_refuses(moe, name):
    from ertacli.errors import UserError

    needs(name)
    s, calls, _ = moe
    with pytest.raises(UserError, match=rf"^{name} cannot cache every denoiser: WanPipeline denoises with transformer and "
                                        r"transformer_2, .*half-cached$"):
        peer = PEERS[name]
        extra = peer.calibrate(s, type("P", (), {"prompts": [PROMPT], "seeds": [SEED]})()) if peer.calibrate else {}
        peer.build(MOE_STEPS, PEERS[name].grid[0], s.pipe, {**moe_extra(s), **extra})
    assert calls == [0, 0]  # refused before any run (its own calibration included)


def test_denoiser_without_enable_cache_refused_and_nothing_left_attached(moe):
    from ertacli.errors import UserError

    s, _, _ = moe
    s.pipe.transformer_2 = torch.nn.Linear(1, 1)
    with pytest.raises(UserError, match=r"^FirstBlockCache cannot cache every denoiser: WanPipeline's transformer_2 \(Linear\) has no "
                                        r"enable_cache.*half-cached$"):
        with enabled(s.pipe, PEERS["FirstBlockCache"].build(MOE_STEPS, 0.8, s.pipe, {})):
            pass
    assert not s.pipe.transformer.is_cache_enabled
