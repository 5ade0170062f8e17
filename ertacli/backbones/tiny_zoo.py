"""Tiny random pipelines of many diffusers DiT families (as diffusers' own tests build them; no download).

`build(family)` returns a `Tiny`: the pipeline (no text encoder), a prompt encoder giving `prompt_embeds` (and
masks, pooled or negative embeddings as the pipeline wants them) and the call settings. Used by the conformance
suite (tests/test_conformance.py) and `recipes new --from` tests; not a model zoo for real use.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from ertacli.errors import UserError

TEXT_LEN = 8


@dataclass
class Tiny:
    """A tiny pipeline, how its prompts are encoded and the settings of its calls."""

    pipe: Any
    encode: Callable[[list[str]], dict]
    call: dict = field(default_factory=dict)
    patches: list = field(default_factory=list)  # (module, attribute, value) to set while it runs (tests)


def _embeds(prompts: list[str], shape: tuple[int, ...], salt: str = "") -> Any:
    """Deterministic random embeddings per prompt (a stand-in text encoder)."""
    import torch

    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(zlib.crc32((salt + p).encode()))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)


def _encoder(dim: int, *, pooled: int = 0, mask: str = "", negative: bool = False, neg_mask: str = "",
             length: int = TEXT_LEN, pooled_key: str = "pooled_prompt_embeds",
             bool_mask: bool = False) -> Callable[[list[str]], dict]:
    """prompt_embeds (B, length, dim) [+ pooled, attention mask, negatives] for a list of prompts."""
    import torch

    mask_dtype = torch.bool if bool_mask else torch.long

    def encode(prompts: list[str]) -> dict:
        n = len(prompts)
        out: dict = {"prompt_embeds": _embeds(prompts, (length, dim))}
        if pooled:
            out[pooled_key] = _embeds(prompts, (pooled,), "pooled")
        if mask:
            out[mask] = torch.ones(n, length, dtype=mask_dtype)
        if negative:
            out["negative_prompt_embeds"] = _embeds([""] * n, (length, dim), "neg")
            if neg_mask:
                out[neg_mask] = torch.ones(n, length, dtype=mask_dtype)
        return out
    return encode


def _image_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    from ertacli.backbones.tiny_flux_wan import FLUX_VAE

    return AutoencoderKL(**{**FLUX_VAE, "latent_channels": latent_channels}).eval()


def _flow(**kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kw)


def _registered(family: str, pipeline: str) -> Tiny:
    """One of the six registered families, from its own tiny builder and hash text encoder."""
    from ertacli.backbones import get_backbone
    from ertacli.backbones.loader import import_builder

    recipe = SimpleNamespace(model=SimpleNamespace(tiny=None, seed=0, dtype="float32", text_encoder=None))
    pipe, enc = import_builder(get_backbone(pipeline).tiny_builder)(recipe)
    call = dict(num_inference_steps=8, height=16, width=16)
    neg = None
    if pipeline in ("WanPipeline", "CogVideoXPipeline", "StableDiffusion3Pipeline", "LTXPipeline"):
        call["guidance_scale"], neg = 4.0, ""
    if get_backbone(pipeline).is_video:
        call["num_frames"] = 9
    if pipeline == "LTXPipeline":
        call.update(height=32, width=32)
    return Tiny(pipe, lambda prompts: enc.pipeline_kwargs(list(prompts), neg), call)


def flux_kontext() -> Tiny:
    import torch
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel

    from ertacli.backbones.tiny_flux_wan import FLUX_TRANSFORMER

    torch.manual_seed(0)
    pipe = FluxKontextPipeline(scheduler=_flow(shift=1.0), vae=_image_vae(4), text_encoder=None, tokenizer=None,
                               text_encoder_2=None, tokenizer_2=None,
                               transformer=FluxTransformer2DModel(**FLUX_TRANSFORMER).eval())
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return Tiny(pipe, _encoder(32, pooled=32), dict(num_inference_steps=8, height=16, width=16, image=image,
                                                     max_area=256, _auto_resize=False, guidance_scale=1.0))


def chroma() -> Tiny:
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    torch.manual_seed(0)
    tr = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32,
                                  approximator_layers=1).eval()
    pipe = ChromaPipeline(scheduler=_flow(shift=1.0), vae=_image_vae(4), text_encoder=None, tokenizer=None,
                          transformer=tr)
    return Tiny(pipe, _encoder(32, mask="prompt_attention_mask", bool_mask=True, negative=True,
                               neg_mask="negative_prompt_attention_mask"),
                dict(num_inference_steps=8, height=16, width=16, guidance_scale=4.0))  # CFG: two calls a step


def _wan_transformer(**over):
    from diffusers import WanTransformer3DModel

    from ertacli.backbones.tiny_flux_wan import WAN_TRANSFORMER

    return WanTransformer3DModel(**{**WAN_TRANSFORMER, **over}).eval()


def _wan_vae():
    from diffusers import AutoencoderKLWan

    from ertacli.backbones.tiny_flux_wan import WAN_VAE

    return AutoencoderKLWan(**WAN_VAE).eval()


def wan_i2v() -> Tiny:
    import torch
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    tr = _wan_transformer(in_channels=36, image_dim=4, added_kv_proj_dim=24)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=1,
                                                          num_attention_heads=2, image_size=16, intermediate_size=8,
                                                          patch_size=4)).eval()
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_flow(shift=3.0),
                                   image_processor=CLIPImageProcessor(crop_size=16, size=16), image_encoder=clip,
                                   transformer=tr)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return Tiny(pipe, _encoder(32, negative=True), dict(num_inference_steps=8, height=16, width=16, num_frames=9,
                                                        image=image, guidance_scale=4.0))


def wan22_moe() -> Tiny:
    import torch
    from diffusers import WanPipeline

    torch.manual_seed(0)
    high, low = _wan_transformer(), _wan_transformer()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=_flow(shift=3.0),
                       transformer=high, transformer_2=low, boundary_ratio=0.875)
    return Tiny(pipe, _encoder(32, negative=True),
                dict(num_inference_steps=8, height=16, width=16, num_frames=9, guidance_scale=4.0))


def qwen_image(edit: bool = False) -> Tiny:
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageEditPipeline, QwenImagePipeline
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                     axes_dims_rope=(4, 6, 6)).eval()
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4).eval()
    call, patch = dict(num_inference_steps=8, height=32, width=32, true_cfg_scale=1.0), []
    if edit:
        pipe = QwenImageEditPipeline(scheduler=_flow(shift=1.0), vae=vae, text_encoder=None, tokenizer=None,
                                     processor=None, transformer=tr)
        from PIL import Image

        call["image"] = Image.new("RGB", (32, 32), (120, 60, 200))
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module

        patch = [(edit_module, "calculate_dimensions", lambda area, ratio: (32, 32, None))]  # not 1024x1024
    else:
        pipe = QwenImagePipeline(scheduler=_flow(shift=1.0), vae=vae, text_encoder=None, tokenizer=None,
                                 transformer=tr)
    return Tiny(pipe, _encoder(16, mask="prompt_embeds_mask"), call, patch)


def sana() -> Tiny:
    import torch
    from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    tr = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                                attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                cross_attention_dim=8, caption_channels=8, sample_size=32).eval()
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                        downsample_block_type="conv", upsample_block_type="interpolate",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407).eval()
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=_flow(shift=3.0))
    return Tiny(pipe, _encoder(8, mask="prompt_attention_mask", negative=True,
                               neg_mask="negative_prompt_attention_mask"),
                dict(num_inference_steps=8, height=32, width=32, guidance_scale=4.5, use_resolution_binning=False,
                     negative_prompt=None))


def pixart_sigma() -> Tiny:
    import torch
    from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                  num_attention_heads=3, caption_channels=32, in_channels=4, cross_attention_dim=24,
                                  out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
                                  num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                                  norm_elementwise_affine=False, norm_eps=1e-6).eval()
    pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=_image_vae(4), transformer=tr,
                               scheduler=DDIMScheduler())
    return Tiny(pipe, _encoder(32, mask="prompt_attention_mask", negative=True,
                               neg_mask="negative_prompt_attention_mask"),
                dict(num_inference_steps=8, height=16, width=16, guidance_scale=4.5, use_resolution_binning=False,
                     negative_prompt=None))


def lumina2() -> Tiny:
    import torch
    from diffusers import Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(0)
    tr = Lumina2Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=2,
                                   num_attention_heads=1, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None,
                                   norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=[4, 2, 2],
                                   cap_feat_dim=8).eval()
    pipe = Lumina2Pipeline(transformer=tr, scheduler=_flow(), vae=_image_vae(4), text_encoder=None,
                           tokenizer=None)
    return Tiny(pipe, _encoder(8, mask="prompt_attention_mask", negative=True,
                               neg_mask="negative_prompt_attention_mask"),
                dict(num_inference_steps=8, height=32, width=32, guidance_scale=4.0))  # CFG: two calls a step


def cogview4() -> Tiny:
    import torch
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel

    torch.manual_seed(0)
    tr = CogView4Transformer2DModel(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4,
                                    num_attention_heads=4, out_channels=4, text_embed_dim=32, time_embed_dim=8,
                                    condition_dim=4, sample_size=16).eval()  # default size 16x16
    sched = _flow(base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
                  time_shift_type="linear")
    pipe = CogView4Pipeline(tokenizer=None, text_encoder=None, vae=_image_vae(4), transformer=tr, scheduler=sched)
    return Tiny(pipe, _encoder(32, length=16, negative=True),
                dict(num_inference_steps=8, height=32, width=32, guidance_scale=5.0))


def mochi() -> Tiny:
    import torch
    from diffusers import AutoencoderKLMochi, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(0)
    tr = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                 pooled_projection_dim=16, in_channels=12, out_channels=None, qk_norm="rms_norm",
                                 text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu",
                                 max_sequence_length=16).eval()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1)).eval()
    pipe = MochiPipeline(scheduler=_flow(), vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
    return Tiny(pipe, _encoder(32, mask="prompt_attention_mask", negative=True,
                               neg_mask="negative_prompt_attention_mask"),
                dict(num_inference_steps=8, height=16, width=16, num_frames=7, guidance_scale=4.5))


FAMILIES: dict[str, Callable[[], Tiny]] = {
    "flux": lambda: _registered("flux", "FluxPipeline"),
    "flux-kontext": flux_kontext,
    "chroma": chroma,
    "wan2.1-t2v": lambda: _registered("wan", "WanPipeline"),
    "wan2.1-i2v": wan_i2v,
    "wan2.2-moe": wan22_moe,
    "cogvideox": lambda: _registered("cogvideox", "CogVideoXPipeline"),
    "hunyuanvideo": lambda: _registered("hunyuanvideo", "HunyuanVideoPipeline"),
    "sd3": lambda: _registered("sd3", "StableDiffusion3Pipeline"),
    "ltx": lambda: _registered("ltx", "LTXPipeline"),
    "qwen-image": qwen_image,
    "qwen-image-edit": lambda: qwen_image(edit=True),
    "sana": sana,
    "pixart-sigma": pixart_sigma,
    "lumina2": lumina2,
    "cogview4": cogview4,
    "mochi": mochi,
}


def build(family: str) -> Tiny:
    """The tiny pipeline of a family name (see FAMILIES)."""
    if family not in FAMILIES:
        raise UserError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    tiny = FAMILIES[family]()
    tiny.pipe.set_progress_bar_config(disable=True)
    return tiny
