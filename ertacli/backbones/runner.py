"""Run a loaded pipeline: one call per batch, per-sample seeds, final latents and decoded media."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ertacli.errors import UserError


@dataclass
class BatchResult:
    """Output of one pipeline call."""

    latents: Any  # float32 cpu tensor, batch first, in the pipeline's latent layout (packed for Flux)
    media: Any  # float32 cpu tensor in [0, 1]: images (N,3,H,W) or videos (N,F,3,H,W)
    seconds: float  # wall-clock of the pipeline call (cuda-synchronised)
    sigmas: list[float] = field(default_factory=list)  # the scheduler's sigmas as used (incl. the final 0)


def _to_device(kwargs: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """Move tensor kwargs (embeddings) to the device and the model dtype."""
    import torch

    return {
        k: v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in kwargs.items()
    }


def _sync(device: str) -> None:
    """Wait for queued CUDA work so timings are real."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


class _SetTimestepsHook:
    """Temporarily wraps scheduler.set_timesteps so a hook can rewrite sigmas/timesteps after it runs."""

    def __init__(self, scheduler: Any, hook: Callable[[Any], None] | None) -> None:
        self.scheduler, self.hook = scheduler, hook

    def __enter__(self) -> None:
        if self.hook is None:
            return
        original = self.scheduler.set_timesteps

        @functools.wraps(original)  # keeps the signature: retrieve_timesteps inspects it for `sigmas`
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.hook(self.scheduler)
            return out

        self.scheduler.set_timesteps = wrapped

    def __exit__(self, *exc: Any) -> None:
        if self.hook is not None:
            self.scheduler.__dict__.pop("set_timesteps", None)


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
        kwargs["num_frames"] = int(s.frames)
    kwargs.update(_to_device(loaded.encoder.pipeline_kwargs(list(prompts), s.negative_prompt), loaded.device, loaded.dtype))
    kwargs.update(dict(s.pipeline_kwargs or {}))
    return kwargs


def run_batch(loaded, recipe, prompts: Sequence[str], seeds: Sequence[int], *, sigmas_hook=None) -> BatchResult:
    """One pipeline call for the batch; sample i uses prompts[i] and a CPU generator seeded with seeds[i].

    sigmas_hook(scheduler), if given, runs right after the pipeline's scheduler.set_timesteps and may
    rewrite scheduler.sigmas / scheduler.timesteps in place (the sampler steps by index).
    """
    import torch

    if len(prompts) != len(seeds) or not prompts:
        raise UserError(f"run_batch needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    captured: dict[str, Any] = {}

    def on_step_end(pipe: Any, i: int, t: Any, cb: dict[str, Any]) -> dict[str, Any]:
        captured["latents"] = cb["latents"]
        return {}

    kwargs = call_kwargs(loaded, recipe, prompts)
    with _SetTimestepsHook(loaded.pipe.scheduler, sigmas_hook):
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


def run_samples(loaded, recipe, prompts: Sequence[str], seeds: Sequence[int], progress=None, *, sigmas_hook=None) -> list[BatchResult]:
    """Run each sample as its own batch of 1 (per-sample timing); progress is (Progress, task_id) or a callable."""
    if len(prompts) != len(seeds):
        raise UserError(f"run_samples needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    results = []
    for prompt, seed in zip(prompts, seeds):
        results.append(run_batch(loaded, recipe, [prompt], [seed], sigmas_hook=sigmas_hook))
        _advance(progress)
    return results
