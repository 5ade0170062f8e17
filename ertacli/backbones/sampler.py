"""A pipeline and the fixed settings of its calls: one call per batch, per-sample seeds, final latents and media.

Calibration and evaluation run everything through a `Sampler`, whether the CLI built the pipeline from a recipe
(`Sampler.from_recipe`) or a user handed in their own (`ertacli.calibrate` builds one around the pipeline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ertacli.errors import UserError

TINY_FRAMES = 9  # tiny video models: frames when sampling.frames is unset (pretrained: the pipeline's default)


@dataclass
class BatchResult:
    """Output of one pipeline call."""

    latents: Any  # float32 cpu tensor, batch first, in the pipeline's latent layout (packed for Flux)
    media: Any  # float32 cpu tensor in [0, 1]: images (N,3,H,W) or videos (N,F,3,H,W)
    seconds: float  # wall-clock of the pipeline call (cuda-synchronised)
    sigmas: list[float] = field(default_factory=list)  # the scheduler's sigmas as used (incl. the final 0)
    transformer_seconds: float = float("nan")  # wall time inside the transformer's calls, when clocked


def to_device(kwargs: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """Move tensor kwargs to the device: embeddings also to the model dtype, integer masks as they are."""
    import torch

    def move(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        return v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device=device)

    return {k: move(v) for k, v in kwargs.items()}


def sync(device: str) -> None:
    """Wait for queued CUDA work so timings are real."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def step_callback(pipe: Any, on_step_end: Callable) -> dict[str, Any]:
    """Call kwargs that run `on_step_end(pipe, i, t, {"latents": ...})` after every step: diffusers' step-end
    callback, or the older `callback(i, t, latents)` of pipelines without it (PixArt)."""
    import inspect

    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params or "callback" not in params:
        return dict(callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    return dict(callback=lambda i, t, latents: on_step_end(pipe, i, t, {"latents": latents}), callback_steps=1)


def recipe_call_kwargs(recipe, media: str) -> dict[str, Any]:
    """The pipeline-call settings of a recipe's `sampling:` section (prompts and generators excluded)."""
    s = recipe.sampling
    kwargs: dict[str, Any] = dict(num_inference_steps=int(s.steps), height=int(s.height), width=int(s.width),
                                  guidance_scale=float(s.guidance_scale))
    if media == "video":
        frames = s.frames if s.frames is not None else (TINY_FRAMES if recipe.model.source == "tiny" else None)
        if frames is not None:
            kwargs["num_frames"] = int(frames)
    kwargs.update(dict(s.pipeline_kwargs or {}))
    for key in IMAGE_ARGS:  # conditioned pipelines (image-to-video, editing): an image file named in the recipe
        if isinstance(kwargs.get(key), str):
            kwargs[key] = load_image_arg(kwargs[key], getattr(recipe, "base_dir", None), key)
    return kwargs


IMAGE_ARGS = ("image", "last_image", "control_image", "mask_image")
"""Pipeline-call arguments that take an image: a path in `sampling.pipeline_kwargs` is read as one."""


def load_image_arg(value: str, base: Any, key: str) -> Any:
    """A PIL image from a path (relative paths from the recipe's folder, else the working directory)."""
    import os

    from PIL import Image

    path = os.path.expanduser(value)
    if base is not None and not os.path.isabs(path) and os.path.exists(os.path.join(str(base), path)):
        path = os.path.join(str(base), path)
    try:
        return Image.open(path).convert("RGB")
    except OSError as exc:
        raise UserError(f"sampling.pipeline_kwargs.{key}: cannot read image {value!r} ({exc.strerror or exc}); "
                        f"give an image file path") from None


@dataclass
class Sampler:
    """`pipe` called with `call_kwargs` and the prompt kwargs `encode(prompts)` gives; outputs as float tensors."""

    pipe: Any
    backbone: Any  # the registered Backbone of the pipeline class
    encode: Callable[[list[str]], dict]  # prompts -> pipeline kwargs (prompt=, or prompt_embeds=, ...)
    call_kwargs: dict
    device: str = "cpu"
    dtype: Any = None
    micro_batch: int = 0  # split calibration transformer calls into chunks of this many samples (0: whole)
    compile: bool = False  # torch.compile each transformer block once (every session on this pipeline)

    @classmethod
    def from_recipe(cls, loaded, recipe) -> "Sampler":
        """The sampler a recipe describes on a loaded pipeline (its prompt encoder, sampling settings)."""
        neg = recipe.sampling.negative_prompt
        return cls(loaded.pipe, loaded.backbone, lambda prompts: loaded.encoder.pipeline_kwargs(list(prompts), neg),
                   recipe_call_kwargs(recipe, loaded.backbone.media), loaded.device, loaded.dtype,
                   recipe.calibration.micro_batch, loaded.compile)

    @property
    def steps(self) -> int:
        """Denoising steps per call (num_inference_steps)."""
        return int(self.call_kwargs["num_inference_steps"])

    @property
    def transformer(self) -> Any:
        return self.pipe.transformer

    def kwargs(self, prompts: Sequence[str]) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for these prompts (generator and callback excluded)."""
        out = dict(self.call_kwargs)
        out.update(to_device(self.encode(list(prompts)), self.device, self.dtype or self._model_dtype()))
        out["output_type"] = "pt"
        return out

    def _model_dtype(self) -> Any:
        return getattr(self.pipe.transformer, "dtype", None)

    def run(self, prompts: Sequence[str], seeds: Sequence[int], on_step: Any = None) -> BatchResult:
        """One pipeline call for the batch; sample i uses prompts[i] and a CPU generator seeded with seeds[i].

        `on_step()`, if given, is called after every denoising step (progress bars).
        """
        import torch

        if len(prompts) != len(seeds) or not prompts:
            raise UserError(f"a batch needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        captured: dict[str, Any] = {}

        def on_step_end(pipe: Any, i: int, t: Any, cb: dict[str, Any]) -> dict[str, Any]:
            captured["latents"] = cb["latents"]
            if on_step is not None:
                on_step()
            return {}

        kwargs = self.kwargs(prompts)
        kwargs.update(step_callback(self.pipe, on_step_end))
        sync(self.device)
        start = time.perf_counter()
        out = self.pipe(generator=generators, return_dict=False, **kwargs)[0]
        sync(self.device)
        seconds = time.perf_counter() - start
        media = out.detach().to("cpu", torch.float32)
        latents = captured["latents"].detach().to("cpu", torch.float32)
        sigmas = [float(x) for x in getattr(self.pipe.scheduler, "sigmas", [])]
        return BatchResult(latents=latents, media=media, seconds=seconds, sigmas=sigmas)

