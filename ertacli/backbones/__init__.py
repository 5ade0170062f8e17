"""Backbone registry: what the engine needs to know about each diffusers pipeline (no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from ertacli.errors import UserError

@dataclass(frozen=True)
class Backbone:
    """Static facts about one diffusers pipeline class."""

    pipeline: str  # diffusers pipeline class name
    media: str  # "image" | "video"
    branches: tuple[str, ...]  # cache_context names per step, in call order
    latent_layout: str  # "packed" (B, tokens, C) | "BCFHW" | "BFCHW" | "BCHW"
    channel_dim: int  # channel axis of the transformer output
    block_lists: tuple[str, ...]  # transformer attributes holding the block ModuleLists, in order
    default_scheduler: str  # scheduler class name the pipeline ships with
    tiny_builder: str | None = None  # "module:function" building a tiny random pipeline
    unbatched_args: tuple[str, ...] = ()  # transformer kwargs without a batch dimension (micro-batching)
    default_branch: str = "default"  # branch name for transformer calls made outside any cache_context
    transformers: tuple[str, ...] = ("transformer",)  # pipeline attributes of the denoisers the engine hooks
    stream_prefixes: tuple[str, ...] = ("",)  # per transformer: its streams are prefix + branch (`high/cond`)

    @property
    def is_video(self) -> bool:
        """True when the pipeline produces videos."""
        return self.media == "video"


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(b: Backbone) -> None:
    """Register (or replace) a backbone under its pipeline class name: it overrides what discovery reads.

    Public as `ertacli.register_backbone`; a pipeline without an entry is described by
    `ertacli.backbones.discover.discover(pipe)`.
    """
    if b.media not in ("image", "video"):
        raise ValueError(f"backbone {b.pipeline}: media must be 'image' or 'video', got {b.media!r}")
    _REGISTRY[b.pipeline] = b


def get_backbone(pipeline: str) -> Backbone:
    """Return the registered backbone for a pipeline class name, or raise a UserError listing known ones."""
    try:
        return _REGISTRY[pipeline]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UserError(f"unknown pipeline {pipeline!r}; registered backbones: {known}") from None


def is_registered(pipeline: str) -> bool:
    """Whether a Backbone is registered under this pipeline class name."""
    return pipeline in _REGISTRY


def registered() -> list[Backbone]:
    """All registered backbones, sorted by pipeline name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


register_backbone(
    Backbone(
        pipeline="FluxPipeline",
        media="image",
        branches=("cond",),  # "uncond" only runs with true_cfg_scale > 1 and a negative prompt
        latent_layout="packed",
        channel_dim=-1,
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        default_scheduler="FlowMatchEulerDiscreteScheduler",
        tiny_builder="ertacli.backbones.tiny_flux_wan:build_tiny_flux",
        unbatched_args=("txt_ids", "img_ids"),
    )
)

register_backbone(
    Backbone(
        pipeline="WanPipeline",
        media="video",
        branches=("cond", "uncond"),  # "uncond" only runs when guidance_scale > 1
        latent_layout="BCFHW",
        channel_dim=1,
        block_lists=("blocks",),
        default_scheduler="UniPCMultistepScheduler",
        tiny_builder="ertacli.backbones.tiny_flux_wan:build_tiny_wan",
    )
)

register_backbone(
    Backbone(
        pipeline="CogVideoXPipeline",
        media="video",
        branches=("cond_uncond",),  # one batched call [uncond; cond] per step (CFG when guidance_scale > 1)
        latent_layout="BFCHW",
        channel_dim=2,
        block_lists=("transformer_blocks",),  # CogVideoXBlock
        default_scheduler="CogVideoXDDIMScheduler",  # -2b; -5b ships CogVideoXDPMScheduler: no adjustment
        tiny_builder="ertacli.backbones.tiny_cogvideox_hunyuan_sd3_ltx:build_tiny_cogvideox",
        unbatched_args=("image_rotary_emb",),  # (cos, sin) over tokens (5b; the 2b uses sincos positions)
        default_branch="cond_uncond",
    )
)

register_backbone(
    Backbone(
        pipeline="HunyuanVideoPipeline",
        media="video",
        branches=("cond",),  # "uncond" only runs with true_cfg_scale > 1 and a negative prompt
        latent_layout="BCFHW",
        channel_dim=1,
        block_lists=("transformer_blocks", "single_transformer_blocks"),  # HunyuanVideo(Single)TransformerBlock
        default_scheduler="FlowMatchEulerDiscreteScheduler",
        tiny_builder="ertacli.backbones.tiny_cogvideox_hunyuan_sd3_ltx:build_tiny_hunyuanvideo",
    )
)

register_backbone(
    Backbone(
        pipeline="StableDiffusion3Pipeline",
        media="image",
        branches=("cond_uncond",),  # batched [uncond; cond] call; the pipeline sets no cache_context
        latent_layout="BCHW",
        channel_dim=1,
        block_lists=("transformer_blocks",),  # JointTransformerBlock
        default_scheduler="FlowMatchEulerDiscreteScheduler",
        tiny_builder="ertacli.backbones.tiny_cogvideox_hunyuan_sd3_ltx:build_tiny_sd3",
        default_branch="cond_uncond",
    )
)

register_backbone(
    Backbone(
        pipeline="LTXPipeline",
        media="video",
        branches=("cond_uncond",),  # one batched call [uncond; cond] per step (CFG when guidance_scale > 1)
        latent_layout="packed",  # (B, tokens, C): the pipeline packs latents before the loop
        channel_dim=-1,
        block_lists=("transformer_blocks",),  # LTXVideoTransformerBlock
        default_scheduler="FlowMatchEulerDiscreteScheduler",  # with dynamic shifting (mu from the token count)
        tiny_builder="ertacli.backbones.tiny_cogvideox_hunyuan_sd3_ltx:build_tiny_ltx",
        unbatched_args=("rope_interpolation_scale",),  # a (t, h, w) scale tuple
        default_branch="cond_uncond",
    )
)

ADAPTER = "adapter"
"""Pipeline name of models behind a Python adapter (`model.adapter`, see ertacli/backbones/adapter.py)."""

register_backbone(
    Backbone(
        pipeline=ADAPTER,
        media="image",  # replaced by the adapter's own media and branches when it is loaded
        branches=("cond", "uncond"),  # "uncond" only when the adapter supports guidance and guidance_scale > 1
        latent_layout="adapter",
        channel_dim=1,
        block_lists=(),  # no block stack visible: adapters cache in latent space (cache.residual: latent)
        default_scheduler="FlowMatchEulerDiscreteScheduler",
    )
)
