"""Run a loaded pipeline: one call per batch, per-sample seeds, final latents and decoded media."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ertacli.errors import UserError

TINY_FRAMES = 9  # tiny video models: frames when sampling.frames is unset (pretrained: the pipeline's default)


@dataclass
class BatchResult:
    """Output of one pipeline call."""

    latents: Any  # float32 cpu tensor, batch first, in the pipeline's latent layout (packed for Flux)
    media: Any  # float32 cpu tensor in [0, 1]: images (N,3,H,W) or videos (N,F,3,H,W)
    seconds: float  # wall-clock of the pipeline call (cuda-synchronised)
    sigmas: list[float] = field(default_factory=list)  # the scheduler's sigmas as used (incl. the final 0)


def _to_device(kwargs: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """Move tensor kwargs to the device: embeddings also to the model dtype, integer masks as they are."""
    import torch

    def move(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        return v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device=device)

    return {k: move(v) for k, v in kwargs.items()}


def _sync(device: str) -> None:
    """Wait for queued CUDA work so timings are real."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def call_kwargs(loaded, recipe, prompts: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments for the pipeline call (minus generator and callback)."""
    s = recipe.sampling
    kwargs: dict[str, Any] = dict(
        num_inference_steps=int(s.steps),
        height=int(s.height),
        width=int(s.width),
        guidance_scale=float(s.guidance_scale),
        output_type="pt",
    )
    if loaded.backbone.media == "video":
        frames = s.frames if s.frames is not None else (TINY_FRAMES if recipe.model.source == "tiny" else None)
        if frames is not None:
            kwargs["num_frames"] = int(frames)
    encoded = loaded.encoder.pipeline_kwargs(list(prompts), s.negative_prompt)
    kwargs.update(_to_device(encoded, loaded.device, loaded.dtype))
    kwargs.update(dict(s.pipeline_kwargs or {}))
    return kwargs


def run_batch(
    loaded, recipe, prompts: Sequence[str], seeds: Sequence[int], on_step: Any = None
) -> BatchResult:
    """One pipeline call for the batch; sample i uses prompts[i] and a CPU generator seeded with seeds[i].

    `on_step()`, if given, is called after every denoising step (progress bars).
    """
    import torch

    if len(prompts) != len(seeds) or not prompts:
        raise UserError(f"run_batch needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    captured: dict[str, Any] = {}

    def on_step_end(pipe: Any, i: int, t: Any, cb: dict[str, Any]) -> dict[str, Any]:
        captured["latents"] = cb["latents"]
        if on_step is not None:
            on_step()
        return {}

    kwargs = call_kwargs(loaded, recipe, prompts)
    _sync(loaded.device)
    start = time.perf_counter()
    out = loaded.pipe(
        generator=generators,
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        return_dict=False,
        **kwargs,
    )[0]
    _sync(loaded.device)
    seconds = time.perf_counter() - start
    media = out.detach().to("cpu", torch.float32)
    latents = captured["latents"].detach().to("cpu", torch.float32)
    sigmas = [float(x) for x in getattr(loaded.pipe.scheduler, "sigmas", [])]
    return BatchResult(latents=latents, media=media, seconds=seconds, sigmas=sigmas)


def _advance(progress: Any) -> None:
    """Advance a rich (Progress, task_id) pair or call a plain callable."""
    if progress is None:
        return
    if callable(progress):
        progress()
    else:
        bar, task = progress
        bar.advance(task)


def run_samples(
    loaded, recipe, prompts: Sequence[str], seeds: Sequence[int], progress=None
) -> list[BatchResult]:
    """Run each sample as its own batch of 1 (per-sample timing); progress is (Progress, task_id) or a callable."""
    if len(prompts) != len(seeds):
        raise UserError(f"run_samples needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    results = []
    for prompt, seed in zip(prompts, seeds):
        results.append(run_batch(loaded, recipe, [prompt], [seed]))
        _advance(progress)
    return results
