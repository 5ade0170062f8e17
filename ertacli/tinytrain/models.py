"""The two trainable tiny backbones: configs, pipeline assembly and the flow-matching forward of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ertacli.backbones.minilm import DIM
from ertacli.evaluation.digit_data import MOTIONS

FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=4,  # 1 gray latent channel x 2x2 packing
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=32,
    num_attention_heads=4,  # width 128
    joint_attention_dim=DIM,
    pooled_projection_dim=DIM,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),  # sums to attention_head_dim
)
WAN_TRANSFORMER = dict(
    patch_size=(9, 2, 2),  # one token per 2x2 pixels over all 9 frames: 64 tokens per clip (as tiny-flux)
    num_attention_heads=4,
    attention_head_dim=32,  # width 128
    in_channels=1,
    out_channels=1,
    text_dim=DIM,
    freq_dim=256,
    ffn_dim=512,
    num_layers=3,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)


@dataclass
class Spec:
    """One tiny backbone to train: sizes, schedule and the caption bank layout."""

    name: str  # output folder under models/
    video: bool
    size: int  # frame height = width in pixels (= latent size: the VAE keeps pixels)
    frames: int = 1  # frames per clip (video)
    steps: int = 300
    batch: int = 128
    lr: float = 1e-3
    shift: float = 1.0  # FlowMatchEulerDiscreteScheduler shift saved with the pipeline
    ema: float = 0.98  # weight averaging decay; the averaged weights are the ones saved
    guidance: float = 1.0  # guidance scale of the after-training sample check (Wan: classifier-free guidance)
    levels: str = "uniform"  # training noise levels: uniform or logit-normal
    captions_per_group: int = 48  # captions per digit (image) or per digit and motion (video)
    motions: tuple[str, ...] = MOTIONS  # clip motions trained (video); images use the first ("still") only
    transformer: dict[str, Any] = field(default_factory=dict)


SPECS = {
    "tiny-flux": Spec("tiny-flux", video=False, size=16, steps=700, batch=128, lr=1e-3,
                      transformer=FLUX_TRANSFORMER),
    "tiny-wan": Spec("tiny-wan", video=True, size=16, frames=9, steps=3500, batch=32, lr=2e-3, guidance=4.0,
                     captions_per_group=12, transformer=WAN_TRANSFORMER),
}


def build_transformer(spec: Spec) -> Any:
    """A freshly initialised FluxTransformer2DModel or WanTransformer3DModel (call after seeding)."""
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    cls = WanTransformer3DModel if spec.video else FluxTransformer2DModel
    return cls(**spec.transformer)


def build_pipeline(spec: Spec, transformer: Any) -> Any:
    """The real diffusers pipeline around a transformer: pixel VAE, Euler flow-matching scheduler, no text encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, WanPipeline

    from ertacli.tinytrain.vae import flux_pixel_vae, wan_pixel_vae

    scheduler = FlowMatchEulerDiscreteScheduler(shift=spec.shift)
    if spec.video:
        return WanPipeline(tokenizer=None, text_encoder=None, vae=wan_pixel_vae(), scheduler=scheduler,
                           transformer=transformer)
    return FluxPipeline(scheduler=scheduler, vae=flux_pixel_vae(), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


class FluxForward:
    """Packs (B, 1, H, W) latents into Flux tokens and runs the transformer at noise level s in [0, 1]."""

    def __init__(self, transformer: Any, size: int) -> None:
        from diffusers import FluxPipeline

        self.transformer, self.size = transformer, size
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, size // 2, size // 2, "cpu", None).float()
        self.pack = FluxPipeline._pack_latents

    def target_layout(self, x: Any) -> Any:
        """Latents in the transformer's output layout (packed tokens)."""
        return self.pack(x, x.shape[0], x.shape[1], self.size, self.size)

    def __call__(self, xt: Any, s: Any, tokens: Any, pooled: Any) -> Any:
        """Velocity prediction for packed noisy latents xt."""
        import torch

        txt_ids = torch.zeros(tokens.shape[1], 3)
        return self.transformer(hidden_states=xt, timestep=s, pooled_projections=pooled,
                                encoder_hidden_states=tokens, txt_ids=txt_ids, img_ids=self.img_ids,
                                return_dict=False)[0]


class WanForward:
    """Runs the Wan transformer on (B, 1, F, H, W) latents at noise level s (timestep s * 1000, as WanPipeline)."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer

    def target_layout(self, x: Any) -> Any:
        """Latents are already in BCFHW layout."""
        return x

    def __call__(self, xt: Any, s: Any, tokens: Any, pooled: Any) -> Any:
        """Velocity prediction for noisy latents xt (the pooled vector is unused: Wan has none)."""
        return self.transformer(hidden_states=xt, timestep=s * 1000, encoder_hidden_states=tokens,
                                return_dict=False)[0]


def forward_for(spec: Spec, transformer: Any) -> Any:
    """The training forward adapter of a spec."""
    return WanForward(transformer) if spec.video else FluxForward(transformer, spec.size)
