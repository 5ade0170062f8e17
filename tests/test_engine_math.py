"""Engine math without pipelines: least squares, rectification, timestep adjustment, uniform placement, phi."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ertacli.engine.rectify import RectStats, coeff_shape, rectify, sigmoid_coeffs
from ertacli.engine.schedule import (
    LiveSchedule,
    adjusted_sigmas,
    next_sigma,
    phi_summary,
    phi_value,
    uniform_cached_steps,
    uniform_computed_steps,
)

# (granularity, channel_dim, batch-first shape): packed tokens (channels last) and BCFHW (channels at 1)
CASES = [
    ("scalar", -1, (4, 7, 3)),
    ("scalar", 1, (3, 4, 2, 3, 2)),
    ("channel", -1, (4, 7, 3)),
    ("channel", 1, (3, 4, 2, 3, 2)),
    ("element", -1, (6, 5, 3)),
    ("element", 1, (5, 2, 2, 3, 2)),
]


def _data(shape, seed=0):
    """float32 cached velocities v~ and errors eps with a per-element linear part plus noise."""
    g = torch.Generator().manual_seed(seed)
    v = (1.7 * torch.randn(shape, generator=g) + 0.3).float()
    eps = (0.2 * v - 0.05 + 0.3 * torch.randn(shape, generator=g)).float()
    return v, eps


def _groups(t: torch.Tensor, granularity: str, channel_dim: int) -> torch.Tensor:
    """(G, N) view: one row of samples per coefficient group, float64."""
    t = t.double()
    if granularity == "scalar":
        return t.reshape(1, -1)
    if granularity == "element":
        return t.reshape(t.shape[0], -1).T
    cd = channel_dim % t.ndim
    return t.movedim(cd, 0).reshape(t.shape[cd], -1)


def _lstsq(v, eps, granularity, channel_dim):
    """Direct least squares per group on the design [v, 1]."""
    V, E = _groups(v, granularity, channel_dim), _groups(eps, granularity, channel_dim)
    A = torch.stack([V, torch.ones_like(V)], dim=-1)  # (G, N, 2)
    sol = torch.linalg.lstsq(A, E.unsqueeze(-1), driver="gelsd").solution[..., 0]  # (G, 2)
    shape = coeff_shape(v.shape[1:], granularity, channel_dim)
    return sol[:, 0].reshape(shape), sol[:, 1].reshape(shape)


@pytest.mark.parametrize("granularity,channel_dim,shape", CASES)
def test_closed_form_equals_lstsq(granularity, channel_dim, shape):
    v, eps = _data(shape)
    a, b = RectStats.from_batch(v, eps, granularity, channel_dim).solve()
    a_ref, b_ref = _lstsq(v, eps, granularity, channel_dim)
    assert a.dtype == torch.float64 and b.dtype == torch.float64
    assert tuple(a.shape) == tuple(a_ref.shape) == coeff_shape(v.shape[1:], granularity, channel_dim)
    torch.testing.assert_close(a, a_ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(b, b_ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("granularity,channel_dim,shape", CASES)
def test_streamed_halves_equal_one_pass(granularity, channel_dim, shape):
    v, eps = _data(shape, seed=1)
    h = shape[0] // 2
    one = RectStats.from_batch(v, eps, granularity, channel_dim)
    two = (RectStats.from_batch(v[:h], eps[:h], granularity, channel_dim)
           + RectStats.from_batch(v[h:], eps[h:], granularity, channel_dim))
    for name in ("n", "sv", "svv", "se", "sve"):
        torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=1e-12, atol=1e-12)
    for x, y in zip(two.solve(), one.solve()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
    # and the streamed solve is still the direct least squares on all the data
    for x, y in zip(two.solve(), _lstsq(v, eps, granularity, channel_dim)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-8)


def test_count_is_samples_per_group():
    v, eps = _data((3, 4, 2, 5))
    assert float(RectStats.from_batch(v, eps, "scalar", 1).n) == 3 * 4 * 2 * 5
    assert float(RectStats.from_batch(v, eps, "channel", 1).n) == 3 * 2 * 5
    assert float(RectStats.from_batch(v, eps, "element", 1).n) == 3


def test_constant_v_gives_zero_slope():
    v = torch.full((4, 5), 2.0)
    eps = torch.arange(20.0).reshape(4, 5)
    a, b = RectStats.from_batch(v, eps, "scalar", -1).solve()
    assert float(a) == 0.0 and math.isclose(float(b), float(eps.double().mean()), rel_tol=1e-12)


@pytest.mark.parametrize("granularity,channel_dim,shape", CASES)
def test_sigmoid_coeffs_spec(granularity, channel_dim, shape):
    """K = 4a, B = 4(mean eps - 1/2) - K mean v (docs/method.md; not the paper's -4K mean v)."""
    v, eps = _data(shape, seed=2)
    stats = RectStats.from_batch(v, eps, granularity, channel_dim)
    a, _ = _lstsq(v, eps, granularity, channel_dim)
    mv = _groups(v, granularity, channel_dim).mean(-1).reshape(a.shape)
    me = _groups(eps, granularity, channel_dim).mean(-1).reshape(a.shape)
    K, B = sigmoid_coeffs(stats)
    torch.testing.assert_close(K, 4 * a, rtol=0, atol=1e-8)
    torch.testing.assert_close(B, 4 * (me - 0.5) - 4 * a * mv, rtol=0, atol=1e-8)
    assert not torch.allclose(B, 4 * (me - 0.5) - 4 * (4 * a) * mv)  # the paper's misprint is not used


def _bcast(coef, v, granularity, channel_dim):
    if granularity == "scalar":
        return coef
    if granularity == "element":
        return coef[None]
    shape = [1] * v.ndim
    shape[channel_dim % v.ndim] = -1
    return coef.reshape(shape)


@pytest.mark.parametrize("granularity,channel_dim,shape", CASES)
def test_rectify_linear_and_sigmoid(granularity, channel_dim, shape):
    v, _ = _data(shape, seed=3)
    cshape = coeff_shape(v.shape[1:], granularity, channel_dim)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(cshape, generator=g, dtype=torch.float64)
    b = torch.randn(cshape, generator=g, dtype=torch.float64)
    A, B = _bcast(a, v, granularity, channel_dim), _bcast(b, v, granularity, channel_dim)
    out = rectify(v, a, b, "linear", granularity, channel_dim)
    assert out.dtype == v.dtype and out.shape == v.shape
    assert torch.equal(out, (v.double() - (A * v.double() + B)).to(v.dtype))
    out = rectify(v, a, b, "sigmoid", granularity, channel_dim)
    assert torch.equal(out, (v.double() - torch.sigmoid(A * v.double() + B)).to(v.dtype))


@pytest.mark.parametrize("granularity,channel_dim,shape", CASES)
def test_rectify_removes_an_exactly_linear_error(granularity, channel_dim, shape):
    """eps = a v~ + b exactly (per group): fit then rectify gives back v = v~ - eps."""
    vt, _ = _data(shape, seed=5)
    vt = vt.double()
    cshape = coeff_shape(vt.shape[1:], granularity, channel_dim)
    a = torch.linspace(-0.3, 0.4, max(1, math.prod(cshape)), dtype=torch.float64).reshape(cshape)
    b = torch.linspace(0.1, -0.2, max(1, math.prod(cshape)), dtype=torch.float64).reshape(cshape)
    eps = _bcast(a, vt, granularity, channel_dim) * vt + _bcast(b, vt, granularity, channel_dim)
    p, q = RectStats.from_batch(vt, eps, granularity, channel_dim).solve()
    torch.testing.assert_close(p, a, rtol=0, atol=1e-9)
    torch.testing.assert_close(q, b, rtol=0, atol=1e-9)
    torch.testing.assert_close(rectify(vt, p, q, "linear", granularity, channel_dim), vt - eps, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- timestep adjustment

def _flow_sigmas(T: int, shift: float) -> list[float]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(T)
    return s.sigmas.tolist()


BASES = [_flow_sigmas(8, 1.0), _flow_sigmas(20, 3.0), [1.0 - k / 10 for k in range(10)] + [0.0]]


@pytest.mark.parametrize("base", BASES)
def test_adjusted_sigmas_phi_one_is_base(base):
    T = len(base) - 1
    out = adjusted_sigmas(base, [1.0] * T)
    assert len(out) == T + 1 and out[0] == base[0] and out[-1] == 0.0
    for x, y in zip(out, base):
        assert abs(x - y) <= 1e-12


@pytest.mark.parametrize("base", BASES)
def test_adjusted_sigmas_random_phis(base):
    T = len(base) - 1
    for seed in range(50):
        rng = random.Random(seed)
        phis = [rng.random() for _ in range(T)]
        for k in rng.sample(range(T), 2):
            phis[k] = rng.choice([0.0, 1.0])
        out = adjusted_sigmas(base, phis)
        assert len(out) == T + 1
        assert out[0] == base[0]
        assert out[-1] == 0.0  # exactly
        assert all(out[k + 1] <= out[k] for k in range(T)), (seed, out)
        assert all(x >= 0.0 for x in out)
        for k in range(T - 1):  # the docs/method.md recurrence, written out
            want = out[k] - phis[k] * (base[k] - base[k + 1]) * (out[k] / base[k])
            assert math.isclose(out[k + 1], want, rel_tol=1e-12, abs_tol=1e-15)


def test_adjusted_sigmas_phi_zero_repeats_a_sigma():
    base = BASES[1]
    T = len(base) - 1
    phis = [1.0] * T
    phis[3] = 0.0
    phis[4] = 0.0
    out = adjusted_sigmas(base, phis)
    assert out[4] == out[3] and out[5] == out[4]
    assert out[3] == pytest.approx(base[3], abs=1e-12)
    # the remaining intervals are rescaled so that the schedule still ends at 0
    assert out[-1] == 0.0 and out[6] == pytest.approx(base[6] * base[3] / base[5], rel=1e-12)


def test_adjusted_sigmas_needs_one_phi_per_step():
    with pytest.raises(ValueError):
        adjusted_sigmas([1.0, 0.5, 0.0], [1.0])


def test_next_sigma_at_zero_base():
    assert next_sigma(0.3, 0.0, 0.0, 0.5) == 0.0


def test_live_schedule_grows_like_adjusted_sigmas():
    base = BASES[1]
    T = len(base) - 1
    phis = [random.Random(7).random() for _ in range(T)]
    live = LiveSchedule(base, phi_fn=lambda k: phis[k])
    for k in range(T):
        s_k, s_next = live.advance(k)
        assert s_k == live.sigmas[k] and s_next == live.sigmas[k + 1]
    assert live.sigmas == adjusted_sigmas(base, phis)
    assert live.phis == dict(enumerate(phis))
    live.reset()
    assert live.sigmas[0] == base[0] and all(math.isnan(s) for s in live.sigmas[1:])
    fixed = LiveSchedule(base, fixed=adjusted_sigmas(base, phis))
    assert fixed.ratio(0) == 1.0
    for k in range(1, T):
        assert fixed.ratio(k) == pytest.approx(fixed.sigmas[k] / base[k])
    with pytest.raises(ValueError):
        LiveSchedule(base, fixed=base[:-1])


@pytest.mark.parametrize("num,den,want", [
    (0.0, 2.0, 1.0), (0.5, 2.0, 0.75), (2.0, 2.0, 0.0), (5.0, 2.0, 0.0),
    (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, -1.0, 0.0),
])
def test_phi_value(num, den, want):
    assert phi_value(num, den) == want


# ---------------------------------------------------------------- uniform cache, phi summary

def test_uniform_computed_steps():
    for T in range(2, 41):
        for n in range(0, T - 1):
            c = uniform_computed_steps(T, n)
            spec = [math.floor(j * (T - 1) / (T - n - 1) + 0.5) for j in range(T - n)]
            assert c == spec, (T, n)
            assert len(c) == T - n and c[0] == 0 and c[-1] == T - 1
            assert len(set(c)) == len(c)
            s = uniform_cached_steps(T, n)
            assert len(s) == n and set(s) | set(c) == set(range(T)) and not set(s) & set(c)
        with pytest.raises(ValueError):
            uniform_computed_steps(T, T - 1)
    assert uniform_computed_steps(10, 4) == [0, 2, 4, 5, 7, 9]


def test_phi_summary():
    s = phi_summary({1: 0.0, 2: 0.5, 3: 1.0, 5: 0.0, 7: 0.25})
    assert s == {"cached": 5, "zero": 2, "partial": 2, "one": 1, "min": 0.0, "median": 0.25, "max": 1.0}
    s = phi_summary({1: 0.0, 2: 0.5, 3: 1.0, 4: 0.0})
    assert s["median"] == 0.25 and s["cached"] == 4 and s["one"] == 1
    assert phi_summary({}) == {"cached": 0, "zero": 0, "partial": 0, "one": 0,
                               "min": None, "median": None, "max": None}


# ---------------------------------------------------------------- toy hook check (no pipeline)

class _Toy(torch.nn.Module):
    """A 'transformer' whose velocity is x + 1: the latent residual v - x is the same at every step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, hidden_states, timestep=None, return_dict=False):
        self.calls = getattr(self, "calls", 0) + 1
        return (hidden_states + self.w,)


def _toy_run(controller, T):
    from ertacli.engine import ErtaCacheConfig, apply_ertacache, remove_ertacache, reset_ertacache

    toy = _Toy()
    apply_ertacache(toy, ErtaCacheConfig(controller, residual="latent"))
    reset_ertacache(toy)
    controller.begin()
    x = torch.arange(6.0).reshape(2, 3)
    try:
        with torch.no_grad():
            outs = [toy(hidden_states=x * (k + 1), timestep=torch.ones(2), return_dict=False)[0] for k in range(T)]
    finally:
        remove_ertacache(toy)
    return toy, outs


def test_toy_search_is_strict_and_counts():
    """e_k = 0 exactly at every step: lambda = 0 must still cache nothing (strict <), any lambda > 0 caches 1..T-2."""
    from ertacli.engine import SearchController

    T = 5
    ctl = SearchController(T, 0.0, gt_norms={"default": [1.0] * T}, residual="latent")
    toy, outs = _toy_run(ctl, T)
    assert not ctl.cached_steps.get("default") and ctl.nfe["default"] == T
    assert all(ctl.errors["default"][k] == 0.0 for k in range(1, T - 1))
    ctl = SearchController(T, 1e-12, gt_norms={"default": [1.0] * T}, residual="latent")
    toy, outs = _toy_run(ctl, T)
    assert ctl.cached_steps["default"] == [1, 2, 3] and ctl.nfe["default"] == 2
    x = torch.arange(6.0).reshape(2, 3)
    for k, v in enumerate(outs):
        assert torch.equal(v, x * (k + 1) + 1)


def test_toy_apply_latent_skips_the_model():
    from ertacli.engine import ApplyController

    T = 5
    ctl = ApplyController(T, cached={"default": {1, 2}}, residual="latent")
    toy, outs = _toy_run(ctl, T)
    assert toy.calls == T - 2 and ctl.nfe["default"] == T - 2 and ctl.n_cached["default"] == 2
    x = torch.arange(6.0).reshape(2, 3)
    for k, v in enumerate(outs):
        assert torch.equal(v, x * (k + 1) + 1)
    with pytest.raises(RuntimeError):  # more calls than steps
        _toy_run(ApplyController(T - 1, cached={}, residual="latent"), T)
