"""Perceptual metrics (LPIPS, CLIP score) with local-only weights; registered into the metric registry on import."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError
from .metric_registry import as_frames, register_metric

# torchvision ImageNet backbones that lpips wraps: (file name torch.hub caches it under, torchvision builder, weights).
LPIPS_BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
    "vgg": ("vgg16-397923af.pth", "vgg16", "VGG16_Weights.IMAGENET1K_V1"),
}
LPIPS_ENV = {"alex": "ERTACACHE_LPIPS_BACKBONE", "vgg": "ERTACACHE_LPIPS_VGG_BACKBONE"}
LPIPS_MIN_SIDE = 64  # smaller frames are upsampled (bilinear, pred and ref alike): AlexNet needs at least ~32 px
LPIPS_CHUNK = 8  # frames per forward pass
CLIP_MODEL, CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

_INJECTED: dict[str, Any] = {}
_LOADED: dict[tuple, Any] = {}


class MetricUnavailable(UserError):
    """A metric whose weights are not on this machine; the message names the missing file and how to get it."""

    def __init__(self, metric: str, missing: str, fix: str) -> None:
        """One line: metric {metric} unavailable: {missing} not found; {fix}."""
        self.metric, self.missing, self.fix = metric, missing, fix
        super().__init__(f"metric {metric!r} unavailable: {missing} not found; {fix}")


def set_network(name: str, net: Any) -> None:
    """Use net for metric name ('lpips', 'lpips-vgg', or 'clip' with (model, tokenizer)); None clears it."""
    if net is None:
        _INJECTED.pop(name, None)
    else:
        _INJECTED[name] = net


@contextlib.contextmanager
def use_network(name: str, net: Any) -> Iterator[None]:
    """Context manager form of set_network that restores the previous state."""
    old = _INJECTED.get(name)
    set_network(name, net)
    try:
        yield
    finally:
        set_network(name, old)


def clear_cache() -> None:
    """Forget networks loaded from disk in this process."""
    _LOADED.clear()


# ---------------------------------------------------------------------------------------------------- LPIPS


def lpips_backbone_path(net: str, override: str | os.PathLike | None = None) -> Path:
    """Where the ImageNet backbone for LPIPS(net) is read: override, $ERTACACHE_LPIPS_[VGG_]BACKBONE, or torch hub."""
    import torch

    explicit = override or os.environ.get(LPIPS_ENV[net])
    if explicit:
        return Path(explicit).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net][0]


def _lpips_fix(net: str, path: Path) -> str:
    """How to obtain the backbone file for LPIPS(net)."""
    fname, builder, weights = LPIPS_BACKBONES[net]
    return (f"on a machine with internet run `python -c \"import torchvision; torchvision.models.{builder}"
            f"(weights='{weights.split('.')[-1]}')\"` (it saves ~/.cache/torch/hub/checkpoints/{fname}, "
            f"from https://download.pytorch.org/models/{fname}), then copy that file to {path}, "
            f"or point TORCH_HOME or {LPIPS_ENV[net]} at it")


def load_lpips(net: str = "alex", backbone: str | os.PathLike | None = None) -> Any:
    """LPIPS(net) with the paper's linear heads and the ImageNet backbone read from a local file (never downloaded)."""
    path = lpips_backbone_path(net, backbone)
    if not path.is_file():
        raise MetricUnavailable("lpips" if net == "alex" else f"lpips-{net}", str(path), _lpips_fix(net, path))
    key = ("lpips", net, str(path.resolve()))
    if key not in _LOADED:
        import warnings

        import lpips
        import torch

        with warnings.catch_warnings():  # torchvision's notice about lpips' legacy pretrained= argument
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        trunk = {}
        for name in model.net.state_dict():
            _, idx, param = name.split(".")  # "slice1.0.weight" holds torchvision's "features.0.weight"
            trunk[name] = state[f"features.{idx}.{param}"]
        model.net.load_state_dict(trunk)
        _LOADED[key] = model.eval().requires_grad_(False)
    return _LOADED[key]


def _lpips_net(metric: str, net: str, ctx: dict) -> Any:
    """The injected network for metric, else the one loaded from local weights."""
    if metric in _INJECTED:
        return _INJECTED[metric]
    return load_lpips(net, ctx.get(f"{metric.replace('-', '_')}_backbone"))


def _lpips_value(model: Any, pred: Any, ref: Any) -> float:
    """Mean LPIPS over frames of [0, 1] inputs (scaled to [-1, 1]; small frames upsampled)."""
    import torch
    import torch.nn.functional as F

    p, r = as_frames(pred), as_frames(ref)
    if p.shape != r.shape:
        raise ValueError(f"metric shapes differ: {tuple(p.shape)} vs {tuple(r.shape)}")
    h, w = p.shape[-2:]
    if min(h, w) < LPIPS_MIN_SIDE:
        s = LPIPS_MIN_SIDE / min(h, w)
        size = (max(LPIPS_MIN_SIDE, round(h * s)), max(LPIPS_MIN_SIDE, round(w * s)))
        p, r = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in (p, r))
    device = next(model.parameters()).device
    values = []
    with torch.inference_mode():
        for i in range(0, len(p), LPIPS_CHUNK):
            a, b = (x[i:i + LPIPS_CHUNK].to(device) * 2 - 1 for x in (p, r))
            values.append(model(a, b).flatten().float().cpu())
    return float(torch.cat(values).mean())


@register_metric("lpips")
def lpips_alex(pred: Any, ref: Any, **ctx: Any) -> float:
    """LPIPS v0.1 with AlexNet (as in the paper), mean over frames; lower is closer."""
    return _lpips_value(_lpips_net("lpips", "alex", ctx), pred, ref)


@register_metric("lpips-vgg")
def lpips_vgg(pred: Any, ref: Any, **ctx: Any) -> float:
    """LPIPS v0.1 with VGG16, mean over frames; lower is closer."""
    return _lpips_value(_lpips_net("lpips-vgg", "vgg", ctx), pred, ref)


# ---------------------------------------------------------------------------------------------------- CLIP


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory (huggingface_hub's own constant, from HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def clip_choice(ctx: dict) -> tuple[str, str]:
    """(open_clip model name, pretrained tag) from ctx clip_model/clip_pretrained, the environment, or the defaults."""
    name = ctx.get("clip_model") or os.environ.get("ERTACACHE_CLIP_MODEL") or CLIP_MODEL
    tag = ctx.get("clip_pretrained") or os.environ.get("ERTACACHE_CLIP_PRETRAINED") or CLIP_PRETRAINED
    return name, tag


def clip_weights_path(name: str, tag: str, override: str | os.PathLike | None = None) -> Path:
    """The local checkpoint for open_clip (name, tag), or MetricUnavailable naming where it was looked for."""
    from open_clip.pretrained import get_pretrained_cfg

    explicit = override or os.environ.get("ERTACACHE_CLIP_WEIGHTS")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MetricUnavailable("clip", str(path), "set ERTACACHE_CLIP_WEIGHTS to an existing open_clip checkpoint")
    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise UserError(f"open_clip has no pretrained tag {tag!r} for model {name!r}")
    repo = cfg.get("hf_hub", "").strip("/")
    if repo:
        found = _hf_cached(repo)
        if found is not None:
            return found
        where = hf_hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots/<revision>" / CLIP_FILES[0]
        fix = (f"on a machine with internet run `hf download {repo} {CLIP_FILES[0]}` (or {CLIP_FILES[1]}) and copy "
               f"the hub cache over, or set ERTACACHE_CLIP_WEIGHTS=/path/to/{CLIP_FILES[0]}")
        raise MetricUnavailable("clip", str(where), fix)
    url = cfg.get("url", "")
    path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    if path.is_file():
        return path
    raise MetricUnavailable("clip", str(path), f"download {url} to that path, or set ERTACACHE_CLIP_WEIGHTS")


def _hf_cached(repo: str) -> Path | None:
    """A CLIP checkpoint of repo already in the local hub cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    for fname in CLIP_FILES:
        hit = try_to_load_from_cache(repo, fname, cache_dir=str(hf_hub_cache()))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def load_clip(name: str = CLIP_MODEL, tag: str = CLIP_PRETRAINED, weights: str | os.PathLike | None = None):
    """(model, tokenizer) for open_clip (name, tag) from a local checkpoint; never downloads."""
    path = clip_weights_path(name, tag, weights)
    key = ("clip", name, tag, str(path.resolve()))
    if key not in _LOADED:
        import open_clip
        from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(name, tag)
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")))
        open_clip.load_checkpoint(model, str(path))
        pp = get_model_preprocess_cfg(model)
        pp.update({k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg})
        set_model_preprocess_cfg(model, pp)
        _LOADED[key] = (model.eval().requires_grad_(False), open_clip.get_tokenizer(name))
    return _LOADED[key]


def clip_preprocess(frames: Any, model: Any) -> Any:
    """(F,3,H,W) in [0, 1] -> the model's input, through open_clip's own eval transform on 8-bit images."""
    import torch
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    pp = {k: v for k, v in get_model_preprocess_cfg(model).items() if k in PreprocessCfg.__dataclass_fields__}
    transform = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    pixels = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return torch.stack([transform(Image.fromarray(p)) for p in pixels])


def _prompt_of(ctx: dict) -> str:
    """The sample's prompt: ctx prompt=, or prompts[index]."""
    if ctx.get("prompt") is not None:
        return str(ctx["prompt"])
    if ctx.get("prompts") is not None and ctx.get("index") is not None:
        return str(ctx["prompts"][ctx["index"]])
    raise ValueError("clip needs the sample's prompt (compute_metrics(..., prompts=[...]) passes prompt=)")


def clip_cosines(model: Any, tokenizer: Any, frames: Any, prompt: str) -> Any:
    """Cosine similarity of each frame's image embedding with the prompt's text embedding, shape (F,)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        img = model.encode_image(clip_preprocess(as_frames(frames), model).to(device), normalize=True)
        txt = model.encode_text(tokenizer([prompt]).to(device), normalize=True)
        return (img.float() @ txt.float().T).flatten().cpu()


def clip_score_value(model: Any, tokenizer: Any, frames: Any, prompt: str) -> float:
    """max(100 * mean over frames of cos(image, text), 0), torchmetrics' CLIPScore convention."""
    return max(100.0 * float(clip_cosines(model, tokenizer, frames, prompt).mean()), 0.0)


@register_metric("clip")
def clip_score(pred: Any, ref: Any = None, **ctx: Any) -> float:
    """CLIP score of the sample against its prompt (ref unused), frame-averaged for video; higher is better."""
    prompt = _prompt_of(ctx)
    if "clip" in _INJECTED:
        model, tokenizer = _INJECTED["clip"]
    else:
        model, tokenizer = load_clip(*clip_choice(ctx), ctx.get("clip_weights"))
    return clip_score_value(model, tokenizer, pred, prompt)


# ---------------------------------------------------------------------------------------------------- availability


def check_available(name: str, **ctx: Any) -> str | None:
    """None if metric name can run here (or is not a perceptual metric), else the MetricUnavailable message."""
    try:
        if name in ("lpips", "lpips-vgg") and name not in _INJECTED:
            net = "alex" if name == "lpips" else "vgg"
            path = lpips_backbone_path(net, ctx.get(f"{name.replace('-', '_')}_backbone"))
            if not path.is_file():
                raise MetricUnavailable(name, str(path), _lpips_fix(net, path))
        elif name == "clip" and "clip" not in _INJECTED:
            clip_weights_path(*clip_choice(ctx), ctx.get("clip_weights"))
    except MetricUnavailable as e:
        return str(e)
    return None


def missing_metrics(names: list[str], **ctx: Any) -> dict[str, str]:
    """{name: why} for each of names whose weights are absent here."""
    out = {n: check_available(n, **ctx) for n in names}
    return {n: msg for n, msg in out.items() if msg}
