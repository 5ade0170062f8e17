"""Backbones, runner, media and metrics on tiny random models (CPU, a few seconds)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import run_batch
from ertacli.backbones import get_backbone, registered
from ertacli.backbones.loader import load_pipeline, resolve_device
from ertacli.backbones.text import HashTextEncoder, PipelineTextEncoder
from ertacli.errors import UserError
from ertacli.evaluation.metrics import compute_metrics, psnr, ssim

PROMPTS = ["a red circle", "two blue squares"]


def make_recipe(pipeline: str, steps: int = 2, **sampling) -> SimpleNamespace:
    """A duck-typed recipe with the attributes the backbones read."""
    s = dict(steps=steps, height=16, width=16, frames=5, guidance_scale=3.0, negative_prompt="",
             max_sequence_length=None, pipeline_kwargs={})
    s.update(sampling)
    model = SimpleNamespace(pipeline=pipeline, source="tiny", path=None, dtype="float32", seed=0, tiny={},
                            scheduler=None)
    return SimpleNamespace(name="test", model=model, sampling=SimpleNamespace(**s),
                           calibration=SimpleNamespace(micro_batch=0))


@pytest.fixture(scope="module")
def flux():
    recipe = make_recipe("FluxPipeline")
    return load_pipeline(recipe, "cpu"), recipe


@pytest.fixture(scope="module")
def wan():
    recipe = make_recipe("WanPipeline")
    return load_pipeline(recipe, "cpu"), recipe


def test_registry():
    names = [b.pipeline for b in registered()]
    assert {"FluxPipeline", "WanPipeline"} <= set(names)
    assert get_backbone("WanPipeline").branches == ("cond", "uncond")
    with pytest.raises(UserError, match="FluxPipeline"):
        get_backbone("NopePipeline")


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) in ("cpu", "cuda")
    with pytest.raises(UserError):
        resolve_device("tpu7")


def test_flux_shapes(flux):
    loaded, recipe = flux
    assert type(loaded.pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    res = run_batch(loaded, recipe, PROMPTS, [1, 2])
    assert res.latents.shape == (2, 64, 16)  # 16x16 latent, 2x2 packed -> 64 tokens of 4*4 channels
    assert res.media.shape == (2, 3, 16, 16)
    assert res.latents.dtype == torch.float32 and res.media.dtype == torch.float32
    assert 0.0 <= float(res.media.min()) and float(res.media.max()) <= 1.0
    assert res.seconds > 0 and res.sigmas[0] == 1.0 and res.sigmas[-1] == 0.0


def test_wan_shapes(wan):
    loaded, recipe = wan
    res = run_batch(loaded, recipe, PROMPTS, [1, 2])
    assert res.latents.shape == (2, 16, 2, 2, 2)  # BCFHW: 5 frames -> 2 latent frames, 16px -> 2
    assert res.media.shape == (2, 5, 3, 16, 16)
    assert 0.0 <= float(res.media.min()) and float(res.media.max()) <= 1.0


@pytest.mark.parametrize("which", ["flux", "wan"])
def test_batch_matches_per_sample(which, request):
    loaded, recipe = request.getfixturevalue(which)
    batch = run_batch(loaded, recipe, PROMPTS, [7, 8])
    singles = [run_batch(loaded, recipe, [p], [s]) for p, s in zip(PROMPTS, [7, 8])]
    for i, single in enumerate(singles):
        assert torch.allclose(batch.latents[i : i + 1], single.latents, atol=1e-4)
    again = run_batch(loaded, recipe, PROMPTS, [7, 8])
    assert torch.equal(batch.latents, again.latents) and torch.equal(batch.media, again.media)
    other = run_batch(loaded, recipe, PROMPTS, [7, 9])
    assert torch.equal(other.latents[0], batch.latents[0])
    assert not torch.allclose(other.latents[1], batch.latents[1])


def test_hash_encoder():
    enc = HashTextEncoder(32, 24, max_tokens=8, seed=3)
    a1, p1 = enc.embed(["A red circle", "a blue square"])
    a2, p2 = HashTextEncoder(32, 24, max_tokens=8, seed=3).embed(["a RED circle!", "a blue square"])
    assert a1.shape == (2, 8, 32) and p1.shape == (2, 24)
    assert torch.equal(a1, a2) and torch.equal(p1, p2)
    assert not torch.allclose(a1[0], a1[1]) and not torch.allclose(p1[0], p1[1])
    assert torch.count_nonzero(a1[0, 3:]) == 0  # zero padding after three words
    kw = HashTextEncoder(32, 32, style="wan").pipeline_kwargs(["x"], "")
    assert set(kw) == {"prompt_embeds", "negative_prompt_embeds"}
    assert PipelineTextEncoder().pipeline_kwargs(["x"], "blurry") == {"prompt": ["x"], "negative_prompt": ["blurry"]}


def test_metrics():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 32, 32, generator=gen)
    assert psnr(ref, ref) == float("inf")
    noisy = (ref + 0.05 * torch.randn(3, 32, 32, generator=gen)).clamp(0, 1)
    mse = float(((noisy - ref) ** 2).mean())
    assert math.isclose(psnr(noisy, ref), 10 * math.log10(1.0 / mse), rel_tol=1e-4)
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert ssim(noisy, ref) < 1.0
    video = torch.rand(4, 3, 16, 16, generator=gen)
    rows = compute_metrics(["psnr", "ssim"], [video, ref], [video, noisy])
    assert rows[0]["psnr"] == float("inf") and rows[0]["ssim"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(UserError, match="psnr"):
        compute_metrics(["fid"], [ref], [ref])


def test_media(tmp_path):
    from ertacli.runs.media import save_grid, save_image, save_video

    img = torch.rand(3, 16, 16)
    assert save_image(img, tmp_path / "a.png").stat().st_size > 0
    assert save_grid([img, img, img], tmp_path / "g.png", nrow=2).exists()
    out = save_video(torch.rand(5, 3, 16, 16), tmp_path / "v.mp4", fps=4)
    assert out.exists() and out.stat().st_size > 0
