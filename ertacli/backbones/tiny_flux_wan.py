"""Tiny random-weight pipelines built from real diffusers classes (no download), for tests and demos."""

from __future__ import annotations

from typing import Any

from ertacli.backbones.text import HashTextEncoder
from ertacli.errors import UserError

SECTIONS = ("transformer", "vae", "scheduler", "text")

FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels x 2x2 packing
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim
)
FLUX_VAE = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(4,),  # one level: vae_scale_factor 1, latents have the image's H x W
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=1,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.0609,  # FluxPipeline fails without it
    scaling_factor=1.5035,
)
FLUX_SCHEDULER: dict[str, Any] = dict(shift=1.0)

WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
WAN_VAE = dict(
    base_dim=3,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],  # 8x spatial, 4x temporal
)
WAN_SCHEDULER: dict[str, Any] = dict(shift=3.0)

TEXT = dict(max_tokens=16, buckets=4096)


def split_overrides(tiny: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Split recipe.model.tiny into sections; top-level keys outside the sections go to the transformer."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in (tiny or {}).items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"model.tiny.{key} must be a mapping of config overrides, got {value!r}")
            out[key].update(value)
        else:
            out["transformer"][key] = value
    return out


def make(cls: type, defaults: dict[str, Any], overrides: dict[str, Any], where: str) -> Any:
    """Instantiate cls(**defaults | overrides), turning bad keys into a UserError."""
    try:
        return cls(**{**defaults, **overrides})
    except TypeError as exc:
        raise UserError(f"model.tiny.{where}: invalid config override ({exc})") from None


def cast(pipe: Any, name: str) -> None:
    """Cast every module to the recipe dtype (quietly: tiny models keep nothing in float32)."""
    import torch
    from diffusers.utils import logging as dlogging

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if dtype == torch.float32:
        return
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        pipe.to(dtype=dtype)
    finally:
        dlogging.set_verbosity(level)


def wants_minilm(recipe) -> bool:
    """True when the recipe asks for the MiniLM text encoder (model.text_encoder=minilm)."""
    return (getattr(recipe.model, "text_encoder", None) or "pipeline") == "minilm"


def text_dims(recipe, overrides: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Transformer overrides with the text widths set to MiniLM's 384 when it is the encoder (unless overridden)."""
    if not wants_minilm(recipe):
        return overrides
    from ertacli.backbones.minilm import DIM

    return {**{k: DIM for k in keys}, **overrides}


def tiny_text_encoder(recipe, text: dict[str, Any], dim: int, pooled_dim: int, style: str) -> Any:
    """The offline hash encoder sized for the transformer's text inputs, or MiniLM when the recipe asks for it."""
    if wants_minilm(recipe):
        from ertacli.backbones.minilm import MiniLMTextEncoder, check_text_dim

        check_text_dim(dim, "the transformer's text width")
        check_text_dim(pooled_dim, "its pooled width")
        return MiniLMTextEncoder(style, int(text.get("max_tokens", TEXT["max_tokens"])))
    cfg = {**TEXT, **text}
    return HashTextEncoder(
        dim, pooled_dim, int(cfg["max_tokens"]), recipe.model.seed, buckets=int(cfg["buckets"]), style=style
    )


def build_tiny_flux(recipe) -> tuple[Any, Any]:
    """A FluxPipeline with a 2+2-layer random FluxTransformer2DModel and a 1-level AutoencoderKL."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    ov = split_overrides(recipe.model.tiny)
    torch.manual_seed(recipe.model.seed)
    tov = text_dims(recipe, ov["transformer"], ("joint_attention_dim", "pooled_projection_dim"))
    transformer = make(FluxTransformer2DModel, FLUX_TRANSFORMER, tov, "transformer").eval()
    vae = make(AutoencoderKL, FLUX_VAE, ov["vae"], "vae").eval()
    scheduler = make(FlowMatchEulerDiscreteScheduler, FLUX_SCHEDULER, ov["scheduler"], "scheduler")
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    cast(pipe, recipe.model.dtype)
    cfg = transformer.config
    encoder = tiny_text_encoder(recipe, ov["text"], cfg.joint_attention_dim, cfg.pooled_projection_dim, "flux")
    return pipe, encoder


def build_tiny_wan(recipe) -> tuple[Any, Any]:
    """A WanPipeline with a 2-layer random WanTransformer3DModel and a tiny AutoencoderKLWan."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    ov = split_overrides(recipe.model.tiny)
    torch.manual_seed(recipe.model.seed)
    tov = text_dims(recipe, ov["transformer"], ("text_dim",))
    transformer = make(WanTransformer3DModel, WAN_TRANSFORMER, tov, "transformer").eval()
    vae = make(AutoencoderKLWan, WAN_VAE, ov["vae"], "vae").eval()
    scheduler = make(FlowMatchEulerDiscreteScheduler, WAN_SCHEDULER, ov["scheduler"], "scheduler")
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    cast(pipe, recipe.model.dtype)
    encoder = tiny_text_encoder(recipe, ov["text"], transformer.config.text_dim, transformer.config.text_dim, "wan")
    return pipe, encoder
