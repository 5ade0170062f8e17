"""LPIPS / CLIP score plumbing with random-weight networks built here; missing weights never become numbers."""

from __future__ import annotations

import math
import socket
import urllib.request

import pytest
import torch

from ertacli.evaluation import perceptual as P
from ertacli.evaluation.metrics import compute_metrics, get_metric

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def alex_random():
    """lpips AlexNet with the packaged linear heads and a random trunk (no download)."""
    import warnings

    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's notice about lpips' legacy pretrained= argument
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)


@pytest.fixture(scope="module")
def tiny_clip():
    """A random one-layer open_clip CLIP at 32 px with the packaged BPE tokenizer."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    with torch.no_grad():
        model.text_projection.neg_()  # this seed's cosines are all negative (score 0): flip them positive
    return model, open_clip.SimpleTokenizer()


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Every weight location points into an empty directory; the network is cut off."""
    for var in ("ERTACACHE_LPIPS_BACKBONE", "ERTACACHE_LPIPS_VGG_BACKBONE", "ERTACACHE_CLIP_WEIGHTS",
                "ERTACACHE_CLIP_MODEL", "ERTACACHE_CLIP_PRETRAINED", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    P.clear_cache()
    return tmp_path


def _imgs(seed: int, shape=(3, 16, 16)):
    """A seeded random [0, 1] tensor."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_lpips_identical_zero_different_positive(alex_random):
    with P.use_network("lpips", alex_random):
        a, b = _imgs(0), _imgs(1)
        assert get_metric("lpips")(a, a.clone()) == pytest.approx(0.0, abs=1e-7)
        assert get_metric("lpips")(a, b) > 0


def test_lpips_video_is_frame_mean(alex_random):
    with P.use_network("lpips", alex_random):
        p, r = _imgs(2, (4, 3, 16, 16)), _imgs(3, (4, 3, 16, 16))
        per_frame = [P.lpips_alex(pf, rf) for pf, rf in zip(p, r)]
        assert P.lpips_alex(p, r) == pytest.approx(sum(per_frame) / 4, rel=1e-5)


def test_lpips_loads_torchvision_backbone_file(alex_random, no_weights, monkeypatch):
    """A torchvision-format AlexNet state dict on disk is mapped into lpips' trunk slices."""
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    path = no_weights / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    monkeypatch.setenv("ERTACACHE_LPIPS_BACKBONE", str(path))
    assert P.check_available("lpips") is None
    net = P.load_lpips("alex")
    assert torch.equal(net.net.slice1[0].weight, tv.features[0].weight)
    assert torch.equal(getattr(net.net.slice5, "10").bias, tv.features[10].bias)
    assert torch.equal(net.lin0.model[1].weight, alex_random.lin0.model[1].weight)  # packaged heads
    a = _imgs(4)
    assert P.lpips_alex(a, a) == pytest.approx(0.0, abs=1e-7) and P.lpips_alex(a, _imgs(5)) > 0
    assert P.load_lpips("alex") is net  # cached per process


@pytest.mark.parametrize("name,fname,env", [("lpips", "alexnet-owt-7be5be79.pth", "ERTACACHE_LPIPS_BACKBONE"),
                                            ("lpips-vgg", "vgg16-397923af.pth", "ERTACACHE_LPIPS_VGG_BACKBONE")])
def test_lpips_missing_weights_names_file_and_fix(no_weights, name, fname, env):
    expected = no_weights / "torch" / "hub" / "checkpoints" / fname
    with pytest.raises(P.MetricUnavailable) as err:
        get_metric(name)(_imgs(0), _imgs(1))
    msg = str(err.value)
    assert str(expected) in msg and f"https://download.pytorch.org/models/{fname}" in msg and env in msg
    assert P.missing_metrics([name, "psnr"]) == {name: msg}


def test_clip_score_deterministic_and_video_frame_mean(tiny_clip):
    model, tok = tiny_clip
    img, video = _imgs(6), _imgs(7, (3, 3, 24, 20))
    with P.use_network("clip", tiny_clip):
        s1, s2 = P.clip_score(img, None, prompt=PROMPT), P.clip_score(img, img, prompt=PROMPT)
        assert math.isfinite(s1) and 0 < s1 <= 100 and s1 == s2
        cos = P.clip_cosines(model, tok, video, PROMPT)
        frames = torch.stack([P.clip_cosines(model, tok, f, PROMPT)[0] for f in video])
        assert torch.allclose(cos, frames, atol=1e-5)
        assert P.clip_score(video, None, prompt=PROMPT) == pytest.approx(max(100 * float(frames.mean()), 0), abs=1e-4)
        assert P.clip_score(img, None, prompts=["x", PROMPT], index=1) == s1
        assert P.clip_score(img, None, prompt="two blue squares") != s1
        assert P.clip_score(video, None, prompt=PROMPT) > 0
        with pytest.raises(ValueError, match="prompt"):
            P.clip_score(img, None)


def test_clip_through_compute_metrics(tiny_clip, alex_random):
    preds, refs = [_imgs(8), _imgs(9)], [_imgs(10), _imgs(9)]
    with P.use_network("clip", tiny_clip), P.use_network("lpips", alex_random):
        rows = compute_metrics(["clip", "lpips", "psnr"], preds, refs, prompts=[PROMPT, "a digit 3"])
    assert rows[0]["clip"] == P.clip_score_value(*tiny_clip, preds[0], PROMPT) > 0
    assert rows[1]["clip"] == P.clip_score_value(*tiny_clip, preds[1], "a digit 3") > 0
    assert rows[1]["lpips"] == pytest.approx(0.0, abs=1e-7) and rows[0]["lpips"] > 0


def test_clip_preprocess_shape_and_range(tiny_clip):
    x = P.clip_preprocess(_imgs(11, (2, 3, 40, 64)), tiny_clip[0])
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_clip_missing_weights_names_download(no_weights):
    with pytest.raises(P.MetricUnavailable) as err:
        get_metric("clip")(_imgs(0), None, prompt=PROMPT)
    msg = str(err.value)
    assert str(no_weights / "hf" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K") in msg
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors" in msg
    assert "ERTACACHE_CLIP_WEIGHTS" in msg


def test_clip_explicit_weights_path_missing(no_weights, monkeypatch):
    monkeypatch.setenv("ERTACACHE_CLIP_WEIGHTS", str(no_weights / "nope.safetensors"))
    msg = P.check_available("clip")
    assert msg and str(no_weights / "nope.safetensors") in msg


def test_injected_networks_are_available(no_weights, alex_random, tiny_clip):
    with P.use_network("lpips", alex_random), P.use_network("clip", tiny_clip):
        assert P.missing_metrics(["lpips", "clip"]) == {}
    assert set(P.missing_metrics(["lpips", "clip"])) == {"lpips", "clip"}


def test_vbench_missing_package(monkeypatch, tmp_path):
    import importlib.util

    from ertacli.evaluation import vbench as vbench_eval

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vbench" else real(name, *a))
    with pytest.raises(P.MetricUnavailable, match=r"pip install 'ertacache\[vbench\]'"):
        vbench_eval.run_vbench(tmp_path)


def test_vbench_dimension_and_weight_checks(monkeypatch, tmp_path):
    from ertacli.evaluation import vbench as vbench_eval
    from ertacli.errors import UserError

    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="object_class"):
        vbench_eval.check_dimensions(["object_class"])
    assert vbench_eval.check_dimensions(None) == vbench_eval.STANDARD_DIMENSIONS
    missing = dict(vbench_eval.missing_weights(["motion_smoothness", "temporal_flickering"]))
    amt = "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"
    assert missing == {str(tmp_path / "amt_model/amt-s.pth"): amt}


def test_clip_weights_found_in_hub_cache_without_network(no_weights):
    snap = no_weights / "hf" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    assert P.clip_weights_path("ViT-B-32", "laion2b_s34b_b79k") == snap / "open_clip_pytorch_model.bin"
    assert P.check_available("clip") is None


def test_clip_loads_checkpoint_file(no_weights, tiny_clip, monkeypatch):
    """A model config plus ERTACACHE_CLIP_WEIGHTS loads through open_clip's own checkpoint loader."""
    import json

    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                                           "image_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (no_weights / "cfg").mkdir()
    (no_weights / "cfg" / "ErtaTiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(no_weights / "cfg")
    torch.save(tiny_clip[0].state_dict(), no_weights / "tiny.pt")
    monkeypatch.setenv("ERTACACHE_CLIP_WEIGHTS", str(no_weights / "tiny.pt"))
    img = _imgs(12)
    got = P.clip_score(img, None, prompt=PROMPT, clip_model="ErtaTiny", clip_pretrained="none")
    assert got > 0 and got == pytest.approx(P.clip_score_value(*tiny_clip, img, PROMPT), abs=1e-4)
    cos = P.clip_cosines(*P.load_clip("ErtaTiny", "none"), img, PROMPT)
    assert torch.allclose(cos, P.clip_cosines(*tiny_clip, img, PROMPT), atol=1e-5)


def test_saved_markdown_names_each_missing_reason_once(tmp_path):
    import pandas as pd

    from ertacli.runs.tables import save_table

    why = "missing: metric 'lpips' unavailable: /x/alexnet.pth not found"
    df = pd.DataFrame({"row": ["a", "b"], "psnr": [30.0, 31.0], "lpips": [why, why]})
    csv_path, md_path = save_table(df, tmp_path, "t")
    md = md_path.read_text()
    assert md.count("missing (below)") == 2 and md.count(why) == 1
    assert pd.read_csv(csv_path)["lpips"].tolist() == [why, why]
