"""A toy model behind the adapter entry: not a diffusers pipeline, just a velocity field and a latent space.

Recipe `recipes/toy-adapter.yaml` names it with `adapter: ../examples/toy_adapter.py:build`. The velocity is the
exact rectified flow of a Gaussian around a per-prompt target image (two colours hashed from the prompt's words,
a disc on a background; the noise seed picks the sample) plus a small convolutional field with fixed-seed random
weights, so trajectories are curved and caching has something to get wrong. Latents are RGB pixels in [-1, 1]; classifier-free guidance is supported
(the empty prompt's target is mid-grey).
"""

from __future__ import annotations

import zlib

import torch

from ertacli.backbones.adapter import AdapterModel

EMBED = 6  # two RGB colours


def encode(prompts: list[str]) -> torch.Tensor:
    """(B, 6) colours in [-1, 1] hashed from each prompt's words; the empty prompt gives zeros (grey)."""
    out = torch.zeros(len(prompts), EMBED)
    for i, prompt in enumerate(prompts):
        for word in prompt.lower().split():
            g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
            out[i] += torch.rand(EMBED, generator=g) * 2 - 1
        out[i] = out[i].clamp(-1, 1)
    return out


def target_image(cond: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: colour A inside a centred disc, colour B outside, soft edge."""
    ys = torch.linspace(-1, 1, height, device=cond.device, dtype=cond.dtype)
    xs = torch.linspace(-1, 1, width, device=cond.device, dtype=cond.dtype)
    r = (ys[:, None] ** 2 + xs[None, :] ** 2).sqrt()
    inside = torch.sigmoid((0.6 - r) * 10)[None, None]
    a, b = cond[:, :3, None, None], cond[:, 3:, None, None]
    return a * inside + b * (1 - inside)


class ToyVelocity(torch.nn.Module):
    """v(x, sigma, cond): the exact flow of data ~ N(target, tau^2) plus a small random-weight convolutional field."""

    def __init__(self, seed: int = 0, width: int = 16, strength: float = 0.5, tau: float = 0.5):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(4, width, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(width, 3, 3, padding=1), torch.nn.Tanh())
        self.strength, self.tau2 = strength, tau * tau
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, 1, 1, 1)
        target = target_image(cond.to(x.device, x.dtype), x.shape[-2], x.shape[-1])
        field = self.net(torch.cat([x, s.expand(-1, 1, *x.shape[-2:])], dim=1))
        # x_s = (1 - s) x0 + s n with x0 ~ N(target, tau^2): v = (x_s - E[x0 | x_s]) / s, written without 1/s
        d = (1 - s) ** 2 * self.tau2 + s ** 2
        v = ((s - (1 - s) * self.tau2) * x - s * target) / d
        return v + self.strength * field


def build(recipe, device: str, dtype: torch.dtype) -> AdapterModel:
    """The adapter entry: `fn(recipe, device, dtype) -> AdapterModel`."""
    net = ToyVelocity(seed=recipe.model.seed).to(device=device, dtype=dtype).eval()
    return AdapterModel(
        velocity=net,
        encode=lambda prompts: encode(prompts).to(device=device, dtype=dtype),
        latent_shape=lambda height, width, frames: (3, height, width),
        decode=lambda latents: ((latents.float() + 1) / 2).clamp(0, 1),
        media="image",
        guidance=True,
        shift=1.0,
    )
