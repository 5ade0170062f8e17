"""Load a recipe's pipeline (tiny random or pretrained) onto a device, with its prompt encoder."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any

from ertacli.backbones import Backbone, get_backbone, is_registered
from ertacli.backbones.text import PipelineTextEncoder, PromptEncoder
from ertacli.errors import UserError

SCHEDULER_CHOICES = (None, "flow-euler")
TEXT_ENCODERS = ("pipeline", "hash", "minilm")
_STYLES = {"FluxPipeline": "flux", "WanPipeline": "wan"}  # prompt_embeds conventions of the offline encoders
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass
class Loaded:
    """A ready pipeline with everything the runner and the engine need."""

    pipe: Any
    backbone: Backbone
    encoder: PromptEncoder
    device: str
    dtype: Any  # torch.dtype
    compile: bool = False  # torch.compile the transformer's blocks (the whole transformer in latent mode)

    @property
    def transformer(self) -> Any:
        """The pipeline's transformer (where the cache hooks go)."""
        return self.pipe.transformer

    @property
    def scheduler_name(self) -> str:
        """Class name of the pipeline's current scheduler."""
        return type(self.pipe.scheduler).__name__


def torch_dtype(name: str) -> Any:
    """torch dtype for "float32" | "float16" | "bfloat16"."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise UserError(f"model.dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def resolve_device(name: str | None) -> str:
    """None -> "cuda" when available else "cpu"; validates cpu / cuda[:N] / mps."""
    import torch

    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(name).strip().lower()
    if not _DEVICE.match(name):
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available here; use --device cpu")
    return name


def import_builder(spec: str) -> Any:
    """Resolve a "module:function" string."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def _load_tiny(recipe, backbone: Backbone) -> tuple[Any, PromptEncoder]:
    """Build the backbone's tiny random pipeline."""
    if not backbone.tiny_builder:
        raise UserError(f"{backbone.pipeline} has no tiny builder; use model.source=pretrained")
    return import_builder(backbone.tiny_builder)(recipe)


def model_path(recipe) -> str:
    """model.path with ~ expanded; a ./ or ../ path is taken from the recipe's folder (else the working dir)."""
    raw = os.path.expanduser(str(recipe.model.path))
    base = getattr(recipe, "base_dir", None)
    if base is not None and (raw in (".", "..") or raw.startswith(("./", "../"))):
        beside = os.path.normpath(os.path.join(str(base), raw))
        if os.path.exists(beside) or not os.path.exists(raw):
            return beside
    return raw


def text_encoder_choice(recipe) -> str:
    """recipe.model.text_encoder (pipeline | hash | minilm), "pipeline" when the recipe has no such field."""
    choice = getattr(recipe.model, "text_encoder", None) or "pipeline"
    if choice not in TEXT_ENCODERS:
        raise UserError(f"model.text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {choice!r}")
    return choice


def _no_text_kwargs(cls: Any) -> dict[str, None]:
    """text_encoder*/tokenizer* = None for every such component of a pipeline class (skips loading them)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: None for k in params if k.startswith(("text_encoder", "tokenizer"))}


TEXT_WIDTHS = ("text_dim", "joint_attention_dim", "text_embed_dim", "caption_channels", "cap_feat_dim",
               "cross_attention_dim")
"""Transformer config keys holding the width of the prompt embeddings, in the order they are looked up."""


def prompt_style(pipe: Any) -> str:
    """The prompt_embeds convention (text.STYLES) a pipeline's call takes, read from its parameters."""
    params = inspect.signature(type(pipe).__call__).parameters
    if "pooled_prompt_embeds" in params:
        return "hunyuan" if "prompt_attention_mask" in params else "flux" if "true_cfg_scale" in params else "sd3"
    return "ltx" if "prompt_attention_mask" in params else "wan"


def offline_encoder(pipe: Any, backbone: Backbone, choice: str, seed: int) -> PromptEncoder:
    """A hash or MiniLM prompt encoder sized to a pipeline's transformer (Flux- and Wan-style pipelines)."""
    from ertacli.backbones.minilm import MiniLMTextEncoder, check_text_dim
    from ertacli.backbones.text import HashTextEncoder

    style = _STYLES.get(backbone.pipeline) or prompt_style(pipe)
    cfg = pipe.transformer.config
    if style == "flux":
        dims = (cfg.joint_attention_dim, cfg.pooled_projection_dim)
    else:
        width = next((cfg[k] for k in TEXT_WIDTHS if cfg.get(k)), None)
        if width is None:
            raise UserError(f"model.text_encoder={choice}: {type(pipe.transformer).__name__}'s config names no text "
                            f"width ({', '.join(TEXT_WIDTHS)}); use model.text_encoder=pipeline")
        dims = (width, cfg.get("pooled_projection_dim") or width)
    if choice == "hash":
        return HashTextEncoder(dims[0], dims[1], 16, seed, style=style)
    for dim, name in zip(dims, ("the transformer's text width", "its pooled width")):
        check_text_dim(dim, name)
    return MiniLMTextEncoder(style)


def _load_pretrained(recipe, backbone: Backbone | None, dtype: Any) -> tuple[Any, PromptEncoder]:
    """DiffusionPipeline-style from_pretrained of the recipe's pipeline class, with a helpful error."""
    import diffusers

    path = recipe.model.path
    if not path:
        raise UserError("model.path is required when model.source=pretrained (a hub id or a local directory)")
    path = model_path(recipe)
    local = path.startswith(("/", ".", "~")) or os.path.exists(path)
    if local and not os.path.isdir(path):
        raise UserError(f"model.path {path!r} is not a directory; point it at a downloaded pipeline folder")
    cls = getattr(diffusers, recipe.model.pipeline, None) or diffusers.DiffusionPipeline
    diffusers.utils.logging.disable_progress_bar()  # no "Loading pipeline components" bar in piped logs
    choice = text_encoder_choice(recipe)
    extra = {} if choice == "pipeline" else _no_text_kwargs(cls)
    try:
        pipe = cls.from_pretrained(path, dtype=dtype, **extra)
    except Exception as exc:  # noqa: BLE001 - any failure here is a user-facing setup problem
        hint = "" if local else (
            f" (download it with `huggingface-cli download {path}` on a machine with internet, "
            f"then --set model.path=<dir>)"
        )
        raise UserError(f"could not load {path}: {type(exc).__name__}: {exc}{hint}") from None
    if choice != "pipeline":
        return pipe, offline_encoder(pipe, backbone or _discovered(pipe), choice, recipe.model.seed)
    if all(getattr(pipe, k, None) is None for k in _no_text_kwargs(type(pipe)) if k.startswith("text_encoder")):
        raise UserError(f"{path} has no text encoder; set model.text_encoder=minilm (or hash) in the recipe")
    return pipe, PipelineTextEncoder(getattr(recipe.sampling, "max_sequence_length", None))


def apply_scheduler(pipe: Any, choice: str | None) -> None:
    """Swap in FlowMatchEulerDiscreteScheduler for "flow-euler" (keeping the shift); None keeps the default."""
    if choice not in SCHEDULER_CHOICES:
        raise UserError(f"model.scheduler must be empty or 'flow-euler', got {choice!r}")
    if choice is None or type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        return
    prediction = pipe.scheduler.config.get("prediction_type")
    if prediction not in (None, "flow_prediction"):
        raise UserError(f"model.scheduler=flow-euler needs a flow-matching model; {type(pipe.scheduler).__name__} "
                        f"predicts {prediction!r}: keep its scheduler (timestep adjustment stays off)")
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(pipe.scheduler.config)
    shift = config.get("shift", config.get("flow_shift"))
    accepted = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters)
    config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    if shift is not None:
        config["shift"] = float(shift)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)


def set_attention_backend(pipe: Any, name: str | None) -> None:
    """transformer.set_attention_backend(name) when a backend is named (diffusers' AttentionBackendName values)."""
    if not name:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [b.value for b in AttentionBackendName]
    if str(name).lower() not in known:
        raise UserError(f"model.attention_backend {name!r} is not a diffusers backend; use one of {', '.join(known)}")
    if not hasattr(pipe.transformer, "set_attention_backend"):
        raise UserError("model.attention_backend needs a diffusers with ModelMixin.set_attention_backend")
    try:
        pipe.transformer.set_attention_backend(str(name).lower())
    except (ValueError, RuntimeError, ImportError) as exc:
        raise UserError(f"model.attention_backend={name}: {exc}") from None


def set_vae_decoding(pipe: Any, tiling: bool, slicing: bool) -> None:
    """Turn the VAE's tiled / sliced decoding on or off, where the VAE implements it."""
    vae = getattr(pipe, "vae", None)
    for flag, attr, on, off in ((tiling, "use_tiling", "enable_tiling", "disable_tiling"),
                                (slicing, "use_slicing", "enable_slicing", "disable_slicing")):
        if vae is not None and hasattr(vae, attr) and hasattr(vae, on):
            getattr(vae, on if flag else off)()


def place_pipeline(pipe: Any, model_cfg: Any, device: str) -> None:
    """Move the pipeline to device, or let diffusers' model / sequential CPU offload place it (accelerators only)."""
    offload = getattr(model_cfg, "cpu_offload", "none") or "none"
    if offload not in ("none", "model", "sequential"):
        raise UserError(f"model.cpu_offload must be none, model or sequential, got {offload!r}")
    if offload == "none" or device == "cpu":  # on the CPU everything already lives in host memory
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def quiet_meaningless_warnings() -> None:
    """Drop diffusers' per-call 'num_frames - 1 has to be divisible by 1' (a VAE without temporal compression)."""
    import logging

    class DivisibleByOne(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "has to be divisible by 1." not in record.getMessage()

    log = logging.getLogger("diffusers.pipelines.wan.pipeline_wan")
    if not any(type(f).__name__ == "DivisibleByOne" for f in log.filters):
        log.addFilter(DivisibleByOne())


def _discovered(pipe: Any, name: str | None = None) -> Backbone:
    """The registered Backbone of `name` (with a second expert hooked, Wan2.2), else the discovered one."""
    from ertacli.backbones.discover import backbone_of

    return backbone_of(pipe, name if name is not None and is_registered(name) else None)


def load_pipeline(recipe, device: str) -> Loaded:
    """Load the recipe's pipeline onto device, in recipe.model.dtype, progress bar off.

    A registered pipeline class uses its registry entry; any other diffusers pipeline is described by discovery.
    """
    name = recipe.model.pipeline
    backbone = get_backbone(name) if is_registered(name) or recipe.model.source == "tiny" else None
    dtype = torch_dtype(recipe.model.dtype)
    if getattr(recipe.model, "adapter", None):
        from ertacli.backbones.adapter import load_adapter

        pipe, backbone, encoder = load_adapter(recipe, device, dtype)
    elif recipe.model.source == "tiny":
        pipe, encoder = _load_tiny(recipe, backbone)
    elif recipe.model.source == "pretrained":
        pipe, encoder = _load_pretrained(recipe, backbone, dtype)
    else:
        raise UserError(f"model.source must be 'tiny' or 'pretrained', got {recipe.model.source!r}")
    if not getattr(recipe.model, "adapter", None):
        backbone = _discovered(pipe, name)
    apply_scheduler(pipe, recipe.model.scheduler)
    set_attention_backend(pipe, getattr(recipe.model, "attention_backend", None))
    set_vae_decoding(pipe, getattr(recipe.model, "vae_tiling", False), getattr(recipe.model, "vae_slicing", True))
    place_pipeline(pipe, recipe.model, device)
    pipe.set_progress_bar_config(disable=True)
    quiet_meaningless_warnings()
    return Loaded(pipe=pipe, backbone=backbone, encoder=encoder, device=device, dtype=dtype)
