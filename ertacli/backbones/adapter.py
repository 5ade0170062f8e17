"""Any model behind a Python adapter: a velocity callable and a sampling loop the engine's hooks attach to.

A recipe with `model.pipeline: adapter` and `model.adapter: "package.module:function"` (or
`"path/to/file.py:function"`, relative to the recipe's folder) names a function
`fn(recipe, device, dtype) -> AdapterModel`. The toolkit wraps the model's velocity in `VelocityModule` (an
`nn.Module` with diffusers' `cache_context`, so the step hook attaches unchanged) and runs it with
`AdapterPipeline`, a flow-matching Euler loop with the keyword interface of a diffusers pipeline.
The engine cannot see an adapter's block stack, so such recipes cache in latent space (`cache.residual: latent`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from diffusers.models.cache_utils import CacheMixin

from ertacli.backbones import ADAPTER, Backbone, get_backbone
from ertacli.errors import UserError

@dataclass
class AdapterModel:
    """What an adapter function returns: the model as a velocity field plus its latent space."""

    velocity: Callable[[Any, Any, Any], Any]  # (x, sigma (B,), cond) -> v, v = dx/dsigma (x_{k+1} = x_k - d_k v)
    latent_shape: Callable[[int, int, Optional[int]], tuple]  # (height, width, frames) -> one sample's shape
    decode: Callable[[Any], Any]  # latents (B, ...) -> media in [0, 1]: (B,3,H,W) or videos (B,F,3,H,W)
    encode: Optional[Callable[[list], Any]] = None  # prompts -> cond (batch first); None: cond = the prompts
    sigmas: Optional[Callable[[int], Sequence[float]]] = None  # T -> T sigmas from 1 down (no final 0)
    media: str = "image"  # "image" | "video"
    guidance: bool = False  # True: classifier-free guidance (branch "uncond") when guidance_scale > 1
    shift: float = 1.0  # flow-matching shift applied by the scheduler to the sigmas
    channel_dim: int = 1  # channel axis of the latents (per-channel rectification)
    latent_layout: str = "BCHW"


class VelocityModule(torch.nn.Module, CacheMixin):
    """The adapter's velocity as a diffusers-style transformer: forward(hidden_states, timestep, ...)."""

    def __init__(self, velocity: Callable) -> None:
        super().__init__()
        self.velocity = velocity  # an nn.Module here is registered, so .to() moves it

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict: bool = True):
        """v = velocity(x, sigma, cond); `timestep` is sigma (the step hook scales it for adjusted steps)."""
        v = self.velocity(hidden_states, timestep, encoder_hidden_states)
        if not return_dict:
            return (v,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=v)


class AdapterPromptEncoder:
    """Prompt encoder for adapter pipelines: raw prompts through, the adapter encodes them."""

    def pipeline_kwargs(self, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
        """prompt= and negative_prompt= for AdapterPipeline."""
        return {"prompt": list(prompts), "negative_prompt": negative_prompt or ""}


def default_sigmas(T: int) -> list[float]:
    """Flow-matching sigmas linspace(1, 1/T, T) (the scheduler appends the final 0 and applies the shift)."""
    return [1.0 - i / T for i in range(T)]


class AdapterPipeline:
    """A flow-matching Euler loop around an AdapterModel, called like a diffusers pipeline."""

    vae = None

    def __init__(self, model: AdapterModel, device: str, dtype: Any) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.model, self.device, self.dtype = model, device, dtype
        self.transformer = VelocityModule(model.velocity)
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=float(model.shift))

    def to(self, device: str) -> "AdapterPipeline":
        """Move the velocity module (when it holds parameters) to `device`."""
        self.device = device
        self.transformer.to(device)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """No progress bar (diffusers pipeline interface)."""

    def progress_bar(self, iterable=None, total=None):
        """No progress bar: the iterable itself."""
        return iterable if iterable is not None else range(total or 0)

    def _noise(self, n: int, shape: tuple, generator) -> torch.Tensor:
        """Initial latents, one CPU generator per sample (as the diffusers pipelines with a generator list)."""
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * n
        x = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        return x.to(self.device, self.dtype)

    def _cond(self, prompts: list[str]) -> Any:
        return self.model.encode(prompts) if self.model.encode is not None else prompts

    def _velocity(self, x, sigma, cond, uncond, scale: float) -> torch.Tensor:
        """One step's velocity: branch "cond", and "uncond" with classifier-free guidance when asked."""
        with self.transformer.cache_context("cond"):
            v = self.transformer(hidden_states=x, timestep=sigma, encoder_hidden_states=cond, return_dict=False)[0]
        if uncond is None:
            return v
        with self.transformer.cache_context("uncond"):
            vu = self.transformer(hidden_states=x, timestep=sigma, encoder_hidden_states=uncond, return_dict=False)[0]
        return vu + scale * (v - vu)

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt: str = "", num_inference_steps: int = 28, height: int = 32,
                 width: int = 32, num_frames: Optional[int] = None, guidance_scale: float = 1.0, generator=None,
                 output_type: str = "pt", callback_on_step_end=None, callback_on_step_end_tensor_inputs=None,
                 return_dict: bool = False, **ignored):
        """Sample `prompt` (a list): Euler steps over the scheduler's sigmas; returns (media,)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        T = int(num_inference_steps)
        sig = list(self.model.sigmas(T)) if self.model.sigmas is not None else default_sigmas(T)
        self.scheduler.set_timesteps(sigmas=sig, device=self.device)
        shape = tuple(self.model.latent_shape(int(height), int(width), num_frames))
        x = self._noise(len(prompts), shape, generator)
        cond = self._cond(prompts)
        cfg = self.model.guidance and guidance_scale > 1.0
        uncond = self._cond([negative_prompt or ""] * len(prompts)) if cfg else None
        n_train = self.scheduler.config.num_train_timesteps
        for i, t in enumerate(self.scheduler.timesteps):
            sigma = (t / n_train).expand(x.shape[0]).to(self.dtype)
            v = self._velocity(x, sigma, cond, uncond, float(guidance_scale))
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": x})
        media = self.model.decode(x)
        self.transformer._reset_stateful_cache()  # as diffusers pipelines do at the end of every call
        return (media,)


def import_adapter(spec: str, base_dir: Path | None = None) -> Callable:
    """Resolve "package.module:function" or "path/file.py:function" (relative to base_dir, else the cwd)."""
    module_part, sep, func = spec.rpartition(":")
    if not sep or not module_part or not func:
        raise UserError(f"model.adapter {spec!r}: expected 'package.module:function' or 'path/file.py:function'")
    try:
        if module_part.endswith(".py") or "/" in module_part:
            module = _load_file(Path(module_part).expanduser(), base_dir)
        else:
            module = importlib.import_module(module_part)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failing to import is a setup problem
        raise UserError(f"model.adapter {spec!r}: cannot import {module_part}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserError(f"model.adapter {spec!r}: {module_part} has no function {func!r}")
    return fn


def _load_file(path: Path, base_dir: Path | None) -> Any:
    """Import a Python file as a module (registered in sys.modules under a name derived from its path)."""
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_file():
        path = base_dir / path
    path = path.resolve()
    if not path.is_file():
        raise UserError(f"model.adapter: file not found: {path} (relative paths start at the recipe's folder)")
    name = f"ertacache_adapter_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_adapter(recipe, device: str, dtype: Any) -> tuple[AdapterPipeline, Backbone, AdapterPromptEncoder]:
    """Build the recipe's adapter model and wrap it: (pipeline, backbone with its media and branches, encoder)."""
    fn = import_adapter(str(recipe.model.adapter), getattr(recipe, "base_dir", None))
    model = fn(recipe, device, dtype)
    if not isinstance(model, AdapterModel):
        raise UserError(f"model.adapter {recipe.model.adapter!r} returned {type(model).__name__}, not an AdapterModel "
                        f"(from ertacli.backbones.adapter import AdapterModel)")
    if model.media not in ("image", "video"):
        raise UserError(f"adapter model media must be 'image' or 'video', got {model.media!r}")
    backbone = replace(get_backbone(ADAPTER), media=model.media, channel_dim=int(model.channel_dim),
                       branches=("cond", "uncond") if model.guidance else ("cond",),
                       latent_layout=model.latent_layout)
    return AdapterPipeline(model, device, dtype), backbone, AdapterPromptEncoder()
