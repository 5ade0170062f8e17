"""Optional VBench scores for a video generate run (pip install 'ertacache[vbench]'); weights read locally only."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .perceptual import MetricUnavailable

# VBench dimensions that work on custom prompts (mode='custom_input'); the first seven are its quality dimensions.
STANDARD_DIMENSIONS = [
    "subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
    "aesthetic_quality", "imaging_quality", "temporal_flickering",
]
CUSTOM_DIMENSIONS = STANDARD_DIMENSIONS + ["overall_consistency", "temporal_style", "human_action"]

_OPENAI = "https://openaipublic.azureedge.net/clip/models"
_HF_VBENCH = "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main"
# Files VBench (local mode) reads under $VBENCH_CACHE_DIR per dimension, with where each comes from.
VBENCH_FILES: dict[str, list[tuple[str, str]]] = {
    "subject_consistency": [
        ("dino_model/facebookresearch_dino_main/hubconf.py", "git clone https://github.com/facebookresearch/dino"),
        ("dino_model/dino_vitbase16_pretrain.pth",
         "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth")],
    "background_consistency": [
        ("clip_model/ViT-B-32.pt",
         f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")],
    "motion_smoothness": [("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth")],
    "dynamic_degree": [("raft_model/models/raft-things.pth",
                        "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzip into raft_model/)")],
    "aesthetic_quality": [
        ("clip_model/ViT-L-14.pt",
         f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
         "https://github.com/LAION-AI/aesthetic-predictor/blob/main/sa_0_4_vit_l_14_linear.pth?raw=true")],
    "imaging_quality": [("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
                         "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
                         "musiq_spaq_ckpt-358bb6af.pth")],
    "temporal_flickering": [],
    "overall_consistency": [("ViCLIP/ViClip-InternVid-10M-FLT.pth", f"{_HF_VBENCH}/ViClip-InternVid-10M-FLT.pth")],
    "temporal_style": [("ViCLIP/ViClip-InternVid-10M-FLT.pth", f"{_HF_VBENCH}/ViClip-InternVid-10M-FLT.pth")],
    "human_action": [("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
                      f"{_HF_VBENCH}/l16_ptk710_ftk710_ftk400_f16_res224.pth")],
}


def vbench_cache_dir() -> Path:
    """Where VBench keeps its weights: $VBENCH_CACHE_DIR or ~/.cache/vbench."""
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench").expanduser()


def vbench_installed() -> bool:
    """Whether the vbench package can be imported."""
    return importlib.util.find_spec("vbench") is not None


def check_dimensions(dimensions: list[str] | None) -> list[str]:
    """The dimensions to run (default: the standard quality ones); UserError for ones custom prompts can't use."""
    dims = list(dimensions or STANDARD_DIMENSIONS)
    bad = [d for d in dims if d not in CUSTOM_DIMENSIONS]
    if bad:
        raise UserError(f"VBench dimension(s) {', '.join(bad)} unsupported on custom prompts; "
                        f"choose from {', '.join(CUSTOM_DIMENSIONS)}")
    return dims


def missing_weights(dimensions: list[str]) -> list[tuple[str, str]]:
    """(path, source) of each weight file the dimensions need that is absent from the VBench cache."""
    root, out = vbench_cache_dir(), []
    for dim in dimensions:
        for rel, source in VBENCH_FILES[dim]:
            path = root / rel
            if not path.is_file() and (str(path), source) not in out:
                out.append((str(path), source))
    return out


def _videos(run_dir: Path) -> dict[str, str]:
    """{mp4 file name under samples/: prompt} from the run's samples table."""
    import pandas as pd

    table = run_dir / "samples.csv"
    if not table.is_file():
        raise UserError(f"{run_dir} is not a generate run (no samples.csv)")
    rows = pd.read_csv(table).to_dict("records")
    videos = {Path(r["file"]).name: str(r["prompt"]) for r in rows if str(r["file"]).endswith(".mp4")}
    if not videos:
        raise UserError(f"{run_dir} holds no videos (samples/*.mp4); VBench scores video runs only")
    return videos


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Set the hub offline switches for the duration (VBench must not fetch anything)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_vbench(run_dir: Path, dimensions: list[str] | None = None, device: str | None = None) -> dict[str, float]:
    """VBench score per dimension over the MP4s of a video generate run; MetricUnavailable if vbench or weights lack."""
    if not vbench_installed():
        raise MetricUnavailable("vbench", "the vbench package", "install it: pip install 'ertacache[vbench]'")
    dims = check_dimensions(dimensions)
    absent = missing_weights(dims)
    if absent:
        listing = "; ".join(f"{path} (from {src})" for path, src in absent)
        raise MetricUnavailable("vbench", f"weight file(s) {listing}",
                                f"download them on a machine with internet into {vbench_cache_dir()} "
                                "(or set VBENCH_CACHE_DIR)")
    run_dir = Path(run_dir)
    videos = _videos(run_dir)
    import torch
    from vbench import VBench

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="ertacache-vbench-") as out, _offline():
        bench = VBench(dev, os.path.join(out, "unused_full_info.json"), out)
        bench.evaluate(videos_path=str(run_dir / "samples"), name="ertacache", prompt_list=videos,
                       dimension_list=dims, local=True, mode="custom_input")
        return _read_results(Path(out) / "ertacache_eval_results.json", dims)


def _read_results(path: Path, dims: list[str]) -> dict[str, float]:
    """{dimension: mean score} from VBench's results JSON ({dim: [mean, per-video list]})."""
    import json

    if not path.is_file():
        raise UserError(f"VBench wrote no results file {path}")
    data = json.loads(path.read_text())
    out = {}
    for dim in dims:
        value = data[dim]
        out[dim] = float(value[0] if isinstance(value, (list, tuple)) else value)
    return out
