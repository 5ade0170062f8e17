"""`ertacache overhead`: uniform plans per predictor timed against the baseline; NFE arithmetic and bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import cli
from ertacli.commands.overhead import cached_counts
from ertacli.errors import UserError

SMALL = ["--set", "sampling.steps=6", "--set", "eval.timing_rounds=1", "--set", "eval.timing_samples=1"]


def test_cached_counts():
    assert cached_counts(20, [0.5, 0.7, 0.8]) == [10, 14, 16]
    with pytest.raises(UserError, match="between 0 and 1"):
        cached_counts(20, [1.5])
    with pytest.raises(UserError, match="needs 1 to 18 cached steps"):
        cached_counts(20, [0.99])


def test_overhead_two_branches(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "overhead", "-m", "tiny-wan-random", "--device", "cpu", "-r", "0.5",
                         *SMALL, "-q")
    assert code == 0, err
    (run,) = (results / "tiny-wan-random").glob("overhead-*")
    df = pd.read_csv(run / "overhead.csv")
    assert list(df["predictor"]) == ["reuse", "extrapolate-1", "extrapolate-2"]
    # 6 steps, 3 cached on each of cond and uncond: 6 of 12 calls computed, 6 cached
    assert (df["baseline_nfe"] == 12).all() and (df["nfe"] == 6).all() and (df["cached_calls"] == 6).all()
    assert (df["ideal_speedup"] == 2.0).all()
    assert ((df["transformer_share"] > 0) & (df["transformer_share"] <= 1)).all()
    assert (df["transformer_seconds"] < df["cached_seconds"]).all()
    assert (run / "overhead.md").is_file() and (run / "resources.json").is_file()


@pytest.mark.parametrize("args,needle", [(["-r", "1.5"], "--ratio 1.5"), (["--predictors", "taylor"], "--predictors 'taylor'")])
def test_overhead_bad_input(results, monkeypatch, capsys, args, needle):
    code, out, err = cli(monkeypatch, capsys, "overhead", "-m", "tiny-wan-random", "--device", "cpu", *args, *SMALL)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (results / "tiny-wan-random").exists()


def test_wan_random_is_full_width():
    """wan2.1-random builds Wan2.1-1.3B's transformer shape (one layer here, to keep it light) and UMT5-shaped prompts."""
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe("wan2.1-random")
    assert recipe.model.source == "tiny" and recipe.model.tiny["transformer"]["num_layers"] == 30
    loaded = load_pipeline(resolve_recipe("wan2.1-random", ["model.tiny.transformer.num_layers=1",
                                                            "model.dtype=float32"]), "cpu")
    cfg = loaded.transformer.config
    assert cfg.num_attention_heads * cfg.attention_head_dim == 1536 and cfg.ffn_dim == 8960 and cfg.text_dim == 4096
    assert loaded.pipe.vae_scale_factor_spatial == 8 and loaded.pipe.vae_scale_factor_temporal == 4
    assert loaded.encoder.pipeline_kwargs(["a cat"], "")["prompt_embeds"].shape == (1, 512, 4096)
