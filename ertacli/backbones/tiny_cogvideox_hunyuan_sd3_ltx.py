"""Tiny random-weight CogVideoX, HunyuanVideo, SD3 and LTX pipelines from real diffusers classes (no download)."""

from __future__ import annotations

from typing import Any

from ertacli.backbones.tiny_flux_wan import FLUX_VAE, cast, make, split_overrides, text_dims, tiny_text_encoder

COGVIDEOX_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    time_embed_dim=8,
    text_embed_dim=32,
    num_layers=2,
    sample_width=4,
    sample_height=4,
    sample_frames=9,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=16,  # the text length must equal this (sincos positions cover text + video tokens)
)
COGVIDEOX_VAE = dict(
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),  # 8x spatial, 4x temporal
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
)
COGVIDEOX_SCHEDULER: dict[str, Any] = dict(prediction_type="v_prediction", timestep_spacing="trailing")

HUNYUAN_TRANSFORMER = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=10,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=1,
    patch_size_t=1,
    guidance_embeds=True,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(2, 4, 4),  # must sum to attention_head_dim
)
HUNYUAN_VAE = dict(
    latent_channels=4,
    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    norm_num_groups=4,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=False,
)
HUNYUAN_SCHEDULER: dict[str, Any] = dict(shift=7.0)

SD3_TRANSFORMER = dict(
    sample_size=32,
    patch_size=1,
    in_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    caption_projection_dim=32,
    joint_attention_dim=32,
    pooled_projection_dim=64,
    out_channels=4,
)
SD3_SCHEDULER: dict[str, Any] = dict(shift=3.0)

LTX_TRANSFORMER = dict(
    in_channels=8,
    out_channels=8,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=4,
    attention_head_dim=8,
    cross_attention_dim=32,
    num_layers=2,
    caption_channels=32,
)
LTX_VAE = dict(
    latent_channels=8,
    block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, False, False),  # 4x spatial, 4x temporal
    decoder_spatio_temporal_scaling=(True, True, False, False),
    decoder_inject_noise=(False, False, False, False, False),
    upsample_residual=(False, False, False, False),
    upsample_factor=(1, 1, 1, 1),
    timestep_conditioning=False,
    patch_size=1,
    patch_size_t=1,
    encoder_causal=True,
    decoder_causal=False,
)
LTX_SCHEDULER: dict[str, Any] = dict(shift=1.0)


def _parts(recipe, cls_t: type, t_cfg: dict, text_keys: tuple[str, ...], cls_v: type, v_cfg: dict,
           cls_s: type, s_cfg: dict) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(transformer, vae, scheduler, text overrides) built under torch.manual_seed(model.seed), in eval mode."""
    import torch

    ov = split_overrides(recipe.model.tiny)
    torch.manual_seed(recipe.model.seed)
    transformer = make(cls_t, t_cfg, text_dims(recipe, ov["transformer"], text_keys), "transformer").eval()
    vae = make(cls_v, v_cfg, ov["vae"], "vae").eval()
    return transformer, vae, make(cls_s, s_cfg, ov["scheduler"], "scheduler"), ov["text"]


def build_tiny_cogvideox(recipe) -> tuple[Any, Any]:
    """A CogVideoXPipeline: 2-layer CogVideoXTransformer3DModel, tiny AutoencoderKLCogVideoX, CogVideoX DDIM."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from diffusers import CogVideoXTransformer3DModel

    transformer, vae, scheduler, text = _parts(
        recipe, CogVideoXTransformer3DModel, COGVIDEOX_TRANSFORMER, ("text_embed_dim",),
        AutoencoderKLCogVideoX, COGVIDEOX_VAE, CogVideoXDDIMScheduler, COGVIDEOX_SCHEDULER)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    cast(pipe, recipe.model.dtype)
    cfg = transformer.config
    text = {**text, "max_tokens": cfg.max_text_seq_length}  # CogVideoX needs exactly this many text tokens
    return pipe, tiny_text_encoder(recipe, text, cfg.text_embed_dim, cfg.text_embed_dim, "wan")


def build_tiny_hunyuanvideo(recipe) -> tuple[Any, Any]:
    """A HunyuanVideoPipeline: 1+1-layer HunyuanVideoTransformer3DModel, tiny AutoencoderKLHunyuanVideo."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers import HunyuanVideoTransformer3DModel

    transformer, vae, scheduler, text = _parts(
        recipe, HunyuanVideoTransformer3DModel, HUNYUAN_TRANSFORMER, ("text_embed_dim", "pooled_projection_dim"),
        AutoencoderKLHunyuanVideo, HUNYUAN_VAE, FlowMatchEulerDiscreteScheduler, HUNYUAN_SCHEDULER)
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=scheduler, text_encoder_2=None, tokenizer_2=None)
    cast(pipe, recipe.model.dtype)
    cfg = transformer.config
    return pipe, tiny_text_encoder(recipe, text, cfg.text_embed_dim, cfg.pooled_projection_dim, "hunyuan")


def build_tiny_sd3(recipe) -> tuple[Any, Any]:
    """A StableDiffusion3Pipeline: 2-layer SD3Transformer2DModel and the 1-level pixel AutoencoderKL."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers import StableDiffusion3Pipeline

    transformer, vae, scheduler, text = _parts(
        recipe, SD3Transformer2DModel, SD3_TRANSFORMER, ("joint_attention_dim", "pooled_projection_dim"),
        AutoencoderKL, FLUX_VAE, FlowMatchEulerDiscreteScheduler, SD3_SCHEDULER)
    none = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                tokenizer_3=None)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, **none)
    cast(pipe, recipe.model.dtype)
    cfg = transformer.config
    return pipe, tiny_text_encoder(recipe, text, cfg.joint_attention_dim, cfg.pooled_projection_dim, "sd3")


def build_tiny_ltx(recipe) -> tuple[Any, Any]:
    """An LTXPipeline: 2-layer LTXVideoTransformer3DModel, tiny AutoencoderKLLTXVideo (framewise coding off)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel

    transformer, vae, scheduler, text = _parts(
        recipe, LTXVideoTransformer3DModel, LTX_TRANSFORMER, ("caption_channels",),
        AutoencoderKLLTXVideo, LTX_VAE, FlowMatchEulerDiscreteScheduler, LTX_SCHEDULER)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    cast(pipe, recipe.model.dtype)
    cfg = transformer.config
    return pipe, tiny_text_encoder(recipe, text, cfg.caption_channels, cfg.caption_channels, "ltx")
