"""The trained digit backbones (models/tiny-*), the pixel VAEs, the MiniLM encoder and the digit-acc metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import cli, run_batch
from ertacli.backbones.loader import load_pipeline, model_path
from ertacli.backbones.minilm import DIM, MAX_TOKENS, MiniLMTextEncoder
from ertacli.evaluation.metrics import compute_metrics
from ertacli.recipe import resolve_recipe
from ertacli.evaluation.digit_classifier import batch_accuracy, prompt_digit
from ertacli.evaluation.digit_data import DIGIT_WORDS, digits, render_images, render_videos

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, steps: int = 4):
    recipe = resolve_recipe(name, [f"sampling.steps={steps}"])
    return load_pipeline(recipe, "cpu"), recipe


@pytest.fixture(scope="module")
def flux():
    return _load("tiny-flux")


@pytest.fixture(scope="module")
def wan():
    return _load("tiny-wan")


def _rgb(latents: torch.Tensor) -> torch.Tensor:
    """(..., 1, H, W) latents in [-1, 1] -> (..., 3, H, W) in [0, 1]."""
    return ((latents + 1) / 2).expand(*latents.shape[:-3], 3, *latents.shape[-2:])


def test_trained_pipelines_load(flux, wan):
    (lf, rf), (lw, _) = flux, wan
    assert type(lf.transformer).__name__ == "FluxTransformer2DModel"
    assert type(lw.transformer).__name__ == "WanTransformer3DModel"
    assert isinstance(lf.encoder, MiniLMTextEncoder) and lf.encoder.style == "flux"
    assert isinstance(lw.encoder, MiniLMTextEncoder) and lw.encoder.style == "wan"
    assert lf.pipe.vae_scale_factor == 1 and lw.pipe.vae_scale_factor_spatial == 1
    assert lf.pipe.text_encoder is None and lw.pipe.text_encoder is None
    assert Path(model_path(rf)) == REPO / "models" / "tiny-flux"


def test_model_path_is_relative_to_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = resolve_recipe("tiny-wan")
    assert Path(model_path(recipe)) == REPO / "models" / "tiny-wan"


def test_two_sample_generate(flux, wan):
    (lf, rf), (lw, rw) = flux, wan
    img = run_batch(lf, rf, ["a handwritten seven", "the digit 2"], [0, 1])
    assert img.media.shape == (2, 3, 16, 16) and img.latents.shape == (2, 64, 4)
    vid = run_batch(lw, rw, ["a handwritten seven drifting left", "the digit 2 rising"], [0, 1])
    assert vid.media.shape == (2, 9, 3, 16, 16) and vid.latents.shape == (2, 1, 9, 16, 16)
    assert 0.0 <= float(vid.media.min()) and float(vid.media.max()) <= 1.0


def test_pixel_vaes_are_identities():
    from ertacli.tinytrain.vae import flux_pixel_vae, wan_pixel_vae

    g = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        vae = flux_pixel_vae()
        assert (vae.decode(g).sample - g.expand(-1, 3, -1, -1)).abs().max() < 1e-4
        assert (vae.encode(g.expand(-1, 3, -1, -1)).latent_dist.mode() - g).abs().max() < 1e-4
        v = g[:, :, None].expand(-1, -1, 3, -1, -1)
        assert (wan_pixel_vae().decode(v).sample - v.expand(-1, 3, -1, -1, -1)).abs().max() < 1e-4


def test_minilm_deterministic():
    enc = MiniLMTextEncoder("flux")
    a = enc.pipeline_kwargs(["a handwritten three", "the digit 7 drifting left"], None)
    b = enc.pipeline_kwargs(["a handwritten three", "the digit 7 drifting left"], None)
    assert a["prompt_embeds"].shape == (2, MAX_TOKENS, DIM) and a["pooled_prompt_embeds"].shape == (2, DIM)
    assert torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert torch.allclose(a["pooled_prompt_embeds"].norm(dim=-1), torch.ones(2))
    assert float(a["prompt_embeds"][0, -1].abs().max()) == 0.0  # zero past the prompt's tokens
    assert not torch.equal(a["prompt_embeds"][0], a["prompt_embeds"][1])
    wan = MiniLMTextEncoder("wan").pipeline_kwargs(["a four"], "")
    assert set(wan) == {"prompt_embeds", "negative_prompt_embeds"}


def test_prompt_digit():
    assert prompt_digit("a handwritten seven") == 7
    assert prompt_digit("the digit 3 drifting left") == 3
    assert prompt_digit("someone wrote 12 things") is None
    assert prompt_digit("a red circle") is None


def test_digit_acc_on_real_digits_and_noise():
    imgs, labels = digits()
    prompts = [f"a handwritten {DIGIT_WORDS[int(y)]}" for y in labels[:200]]
    real = list(_rgb(render_images(imgs[:200], 16)))
    assert batch_accuracy(real, prompts) >= 0.95
    clips = _rgb(render_videos(imgs[:50], ["left", "cw"] * 25, 9, 16).transpose(1, 2))  # (N, F, 3, H, W)
    assert batch_accuracy(list(clips), prompts[:50]) >= 0.9
    noise = list(torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert batch_accuracy(noise, prompts) <= 0.3


def test_digit_acc_metric_uses_the_prompt_and_ignores_ref():
    imgs, labels = digits()
    preds = list(_rgb(render_images(imgs[:4], 16)))
    prompts = [f"the digit {int(y)}" for y in labels[:4]]
    rows = compute_metrics(["digit-acc"], preds, [None] * 4, prompts=prompts)
    assert [r["digit-acc"] for r in rows] == [1.0] * 4
    rows = compute_metrics(["digit-acc"], preds, preds, prompts=["a red circle"] * 4)
    assert all(math.isnan(r["digit-acc"]) for r in rows)


def test_random_tiny_with_minilm_builds():
    recipe = resolve_recipe("tiny-flux-random", ["model.text_encoder=minilm", "sampling.steps=2",
                                                 "sampling.height=16", "sampling.width=16"])
    loaded = load_pipeline(recipe, "cpu")
    assert loaded.transformer.config.joint_attention_dim == DIM
    assert run_batch(loaded, recipe, ["a three"], [0]).media.shape == (1, 3, 16, 16)


def test_training_resumes_bit_exact(tmp_path, monkeypatch):
    import dataclasses

    import ertacli.tinytrain.train as T
    from ertacli.tinytrain.models import SPECS

    monkeypatch.setattr(T, "CHECKPOINT_EVERY", 1)
    spec = dataclasses.replace(SPECS["tiny-wan"], steps=3, batch=2)
    (a := tmp_path / "a").mkdir()
    (b := tmp_path / "b").mkdir()
    ema_a, _, rows_a = T.fit(spec, 0, a)

    def killed(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.fit(spec, 0, b, killed)
    assert (b / T.CHECKPOINT).is_file()
    ema_b, _, rows_b = T.fit(spec, 0, b)
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert all(torch.equal(x, y) for x, y in zip(ema_a.state_dict().values(), ema_b.state_dict().values()))
    assert not (b / T.CHECKPOINT).exists()


def _prompt_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# The issue's target, 0.9, for both models, with the recipes' eval seed (0 for every prompt: all samples share one
# noise) and with one seed per prompt (0..19: independent noise), so one lucky or unlucky draw cannot decide it.
@pytest.mark.parametrize("seeds", ["recipe", "per-prompt"])
@pytest.mark.parametrize("name,prompts", [("tiny-flux", "tiny-eval.txt"), ("tiny-wan", "tiny-video-eval.txt")])
def test_trained_models_draw_the_prompted_digit(name, prompts, seeds):
    """Uncached samples at the recipe's own settings: digit-acc (video: per frame) on the eval prompts."""
    recipe = resolve_recipe(name)
    loaded = load_pipeline(recipe, "cpu")
    texts = _prompt_lines(REPO / "prompts" / prompts)
    seed_of_each = list(range(len(texts))) if seeds == "per-prompt" else [recipe.eval.seeds[0]] * len(texts)
    out = run_batch(loaded, recipe, texts, seed_of_each)
    rows = compute_metrics(["digit-acc"], list(out.media), [None] * len(texts), prompts=texts)
    assert sum(r["digit-acc"] for r in rows) / len(rows) >= 0.9


# grid.png: 16x16 samples scaled to 128 px, five per row, two caption lines above each (6 px padding): 2 rows;
# clips: 9 frames scaled to 64 px, one caption line above each of the 10 rows
@pytest.mark.parametrize("name,prompts,shape", [("tiny-flux", "tiny-digits.txt", (2 * (32 + 128 + 6) + 6, 6 + 5 * 134)),
                                                ("tiny-wan", "tiny-video-digits.txt", (10 * (18 + 64 + 6) + 6, 6 + 9 * 70))])
def test_digit_grid_png(results, monkeypatch, capsys, name, prompts, shape):
    """generate on the ten-digit prompt file writes grid.png: captioned digits, or one captioned row of frames per clip."""
    from PIL import Image


    code, out, err = cli(monkeypatch, capsys, "generate", "-m", name, "--prompts", str(REPO / "prompts" / prompts),
                         "--set", "sampling.steps=4")
    assert code == 0, err
    (run,) = (results / name).glob("generate-*")
    assert Image.open(run / "grid.png").size == (shape[1], shape[0])
