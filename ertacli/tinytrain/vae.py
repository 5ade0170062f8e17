"""Pixel VAEs: real diffusers autoencoders whose weights are set by hand so latents are grayscale pixels.

The latent is one channel, the gray level mapped to [-1, 1] (black -1, white +1); decode repeats it into RGB.
Every residual branch is zeroed (an exact identity), and the output head uses two tricks so that the
normalisation before it does not distort: channels [z, -z, K, -K] have group mean exactly 0 and a norm
dominated by the constant K, and silu(a) - silu(-a) = a exactly. The only error is the relative factor
K / sqrt(K^2 + z^2) - 1 (about z^2 / 2e4 with K = 100): below 1e-4 for |z| <= 1.4, far below 8-bit output.
"""

from __future__ import annotations

from typing import Any

K = 100.0  # constant channel magnitude: larger is more exact in float32, 100 keeps float16 variances finite
LOGVAR = -30.0  # encoder log-variance: posterior std e^-15, so samples equal the mean to ~3e-7

FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(4,),  # one level: vae_scale_factor 1
    layers_per_block=1,
    latent_channels=1,
    norm_num_groups=1,
    sample_size=32,
    scaling_factor=1.0,
    shift_factor=0.0,  # FluxPipeline needs a number here
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
    force_upcast=False,
)

WAN_VAE = dict(
    base_dim=4,
    z_dim=1,
    dim_mult=[1],  # no spatial down/up-sampling
    num_res_blocks=1,
    temperal_downsample=[],  # no temporal compression
    latents_mean=[0.0],
    latents_std=[1.0],
    scale_factor_temporal=1,
    scale_factor_spatial=1,
)


def _zero(module: Any) -> None:
    """Zero every parameter (residual branches become identities, attention outputs vanish)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _set_in(conv: Any, gray_from: int, tap: tuple) -> None:
    """conv_in: channel 0 = gray, 1 = -gray, 2 = +K, 3 = -K (gray = mean of the gray_from input channels)."""
    import torch

    with torch.no_grad():
        for c in range(gray_from):
            conv.weight[(0, c, *tap)] = 1.0 / gray_from
            conv.weight[(1, c, *tap)] = -1.0 / gray_from
        conv.bias[2], conv.bias[3] = K, -K


def _set_norm_gain(weight: Any, gain: float) -> None:
    """Output-norm gain: restore channels 0 and 1 to unit scale, silence the constant channels."""
    import torch

    with torch.no_grad():
        weight.zero_()
        weight[0] = gain
        weight[1] = gain


def _set_out(conv: Any, outputs: int, tap: tuple, logvar: bool) -> None:
    """conv_out: each output = silu(ch0) - silu(ch1) = gray; with logvar, a last channel of constant LOGVAR."""
    import torch

    with torch.no_grad():
        for o in range(outputs):
            conv.weight[(o, 0, *tap)] = 1.0
            conv.weight[(o, 1, *tap)] = -1.0
        if logvar:
            conv.bias[outputs] = LOGVAR


def flux_pixel_vae() -> Any:
    """AutoencoderKL (scale factor 1) whose latent is the gray level in [-1, 1]."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**FLUX_VAE)
    _zero(vae)
    gain = K / 2**0.5  # GroupNorm over [z, -z, K, -K]: mean 0, std sqrt((K^2 + E z^2) / 2)
    for part, n_in, n_out, logvar in ((vae.encoder, 3, 1, True), (vae.decoder, 1, 3, False)):
        _set_in(part.conv_in, n_in, (1, 1))
        _set_norm_gain(part.conv_norm_out.weight, gain)
        _set_out(part.conv_out, n_out, (1, 1), logvar)
    return vae.eval()


def wan_pixel_vae() -> Any:
    """AutoencoderKLWan (no spatial or temporal compression) whose latent is the gray level in [-1, 1]."""
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**WAN_VAE)
    _zero(vae)
    gain = K / 2**0.5  # RMS norm per pixel over [z, -z, K, -K], times sqrt(4)
    tap = (2, 1, 1)  # causal 3x3x3 kernels: the current frame's centre
    for part, n_in, n_out, logvar in ((vae.encoder, 3, 1, True), (vae.decoder, 1, 3, False)):
        _set_in(part.conv_in, n_in, tap)
        _set_norm_gain(part.norm_out.gamma, gain)
        _set_out(part.conv_out, n_out, tap, logvar)
    with torch.no_grad():
        vae.quant_conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
        vae.post_quant_conv.weight.fill_(1.0)
    return vae.eval()
