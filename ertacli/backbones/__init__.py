"""Backbone registry: what the engine needs to know about each diffusers pipeline (no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from ertacli.errors import UserError

ADJUSTABLE_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
"""Scheduler classes for which timestep adjustment is valid (Euler flow matching)."""


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

    @property
    def is_video(self) -> bool:
        """True when the pipeline produces videos."""
        return self.media == "video"


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(b: Backbone) -> None:
    """Register (or replace) a backbone under its pipeline class name."""
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
        tiny_builder="ertacli.backbones.tiny:build_tiny_flux",
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
        tiny_builder="ertacli.backbones.tiny:build_tiny_wan",
    )
)
