"""bench: one-line stops without a GPU or the weights; end to end on CPU with tiny weights of the same classes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import cli
from ertacli.errors import UserError

TINY = ["--set", "model.source=tiny", "--set", "model.dtype=float32", "--set", "sampling.steps=6",
        "--set", "sampling.height=32", "--set", "sampling.width=32", "--set", "eval.warmup=0",
        "--set", "eval.timing_rounds=1", "--set", "eval.timing_samples=1",
        "--set", "calibration.prompts=../prompts/tiny-calibration.txt", "--samples", "1", "-q"]




@pytest.fixture()
def results(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"


def _one_line_exit_2(code: int, out: str, err: str, results: Path) -> str:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not results.exists()
    return " ".join(err.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_no_gpu_stops_at_once(results, monkeypatch, capsys):
    msg = _one_line_exit_2(*cli(monkeypatch, capsys, "bench", "--model", "flux", "--lambda", "0.6", "--device", "cuda"),
                           results)
    assert "no CUDA GPU here: run on a GPU machine or BENCH_DEVICE=cpu with tiny weights" in msg


def test_missing_weights_name_the_download(results, monkeypatch, capsys):
    msg = _one_line_exit_2(*cli(monkeypatch, capsys, "bench", "--model", "flux", "--device", "cpu"), results)
    assert "weights missing: black-forest-labs/FLUX.1-dev is not in the local Hugging Face cache" in msg
    assert "`hf download black-forest-labs/FLUX.1-dev --local-dir models/FLUX.1-dev`" in msg
    msg = _one_line_exit_2(*cli(monkeypatch, capsys, "bench", "--model", "wan2.1", "--device", "cpu",
                                "--set", "model.path=/nowhere/wan"), results)
    assert "/nowhere/wan is not a directory" in msg and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg


def test_weights_in_hub_cache_pass_the_check(results, tmp_path):
    """A hub id whose model_index.json is in the (local) cache is accepted, without any network."""
    from ertacli.commands.bench import check_weights
    from ertacli.recipe import resolve_recipe

    repo = tmp_path / "hf-cache" / "models--black-forest-labs--FLUX.1-dev"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    assert check_weights(resolve_recipe("flux"), "flux") is None
    (repo / "snapshots" / "abc123" / "model_index.json").unlink()
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        check_weights(resolve_recipe("flux"), "flux")


def test_bench_flux_tiny_cpu_end_to_end(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "bench", "--model", "flux", "--lambda", "0.6", "--device", "cpu",
                         "--ablation", *TINY)
    assert code == 0, err
    run = sorted((results / "flux").glob("bench-*"))[-1]
    table = pd.read_csv(run / "bench.csv")
    assert list(table["lambda"]) == [0.6] and (table["nfe"] <= 6).all()
    assert {"psnr", "ssim", "latency_s", "speedup", "ideal_speedup", "peak_memory_gb"} <= set(table.columns)
    resources = json.loads((run / "resources.json").read_text())
    assert resources["kind"] == "process_peak_rss" and resources["peak_bytes"] > 0
    assert (run / "bench.md").is_file() and "bench" in out
    abl = pd.read_csv(run / "ablation.csv")  # --ablation: the paper's Table 3 rows at the same cached count
    assert list(abl["method"]) == ["uniform cache", "offline policy", "+ timestep adjustment", "+ error rectification"]
    assert abl["cached_steps"].nunique() == 1 and (abl["nfe"] == table["nfe"].iloc[0]).all()
