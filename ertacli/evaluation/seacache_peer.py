"""SeaCache (diffusers' own `SeaCacheConfig` hook) as a peer, with the inputs it needs on pipelines that lack them.

SeaCache gates on the scheduler position the denoising loop attaches to `cache_context(name, step_index=...,
sigma=..., num_inference_steps=...)` and on the raw visual latents. WanPipeline passes both (diffusers' built-in
Wan adapter); FluxPipeline passes neither, so on Flux an outer hook (ours, registered data per transformer class)
fills the context with the branch's step index, sigma = the `timestep` input (Flux's flow-matching t / 1000) and
T, and the packed latents are unpacked to (C, 1, H, W) from `img_ids`. Without that, SeaCache runs fail-open
(every call computed). Threshold 0 is off.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.hooks import ModelHook

from .peer_hooks import call_argument, denoisers_of, ensure_context, register, unregister

HOOK = "seacache_step_metadata"


def _flux_raw_vision(module, args, kwargs):
    """Packed Flux latents (B, h*w, C) -> one (C, 1, h, w) latent per sample (row-major `img_ids`)."""
    x, ids = call_argument(module, "hidden_states", args, kwargs), call_argument(module, "img_ids", args, kwargs)
    if x is None or ids is None or x.ndim != 3:
        return None
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if h * w != x.shape[1]:
        return None
    return [s.reshape(h, w, -1).permute(2, 0, 1).unsqueeze(1) for s in x.unbind(0)]


RAW_VISION = {"FluxTransformer2DModel": _flux_raw_vision}
"""Transformer class -> raw-vision adapter, for transformers diffusers' SeaCache has no built-in adapter for."""


class StepState:
    def __init__(self) -> None:
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.step = 0


class StepMetadataHook(ModelHook):
    """Outermost transformer hook: puts step index, sigma and T on the call's cache context when it has none."""

    _is_stateful = True

    def __init__(self, states, steps: int):
        super().__init__()
        self.states, self.steps = states, steps

    def reset_state(self, module):
        self.states.reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        ensure_context(self.states)
        ctx, st = self.states._context, self.states.get_state()
        st.step += 1
        if ctx.step_index is not None:
            return self.fn_ref.original_forward(*args, **kwargs)
        t = call_argument(module, "timestep", args, kwargs)
        with module.cache_context(ctx.name, step_index=st.step - 1, num_inference_steps=self.steps,
                                  sigma=float(t.flatten()[0]) if t is not None else None):
            return self.fn_ref.original_forward(*args, **kwargs)


@dataclass
class SeaCachePeer:
    threshold: float
    max_consecutive: int
    num_inference_steps: int

    def attach(self, pipe) -> None:
        """diffusers' SeaCache on every denoiser (Wan2.2: both experts, each enabled as its users do), with our step
        adapter on a transformer class that needs it; one line and nothing attached when a denoiser cannot take it."""
        from diffusers import SeaCacheConfig
        from diffusers.hooks.hooks import StateManager

        from ..errors import UserError

        modules = denoisers_of(pipe)
        lacking = [name for name, m in modules if not hasattr(m, "enable_cache")]
        if lacking:
            raise UserError(f"SeaCache cannot cache every denoiser: {type(pipe).__name__}'s {', '.join(lacking)} has no enable_cache, "
                            f"and caching the other denoisers only would run the pipeline half-cached")
        for _, module in modules:
            raw = RAW_VISION.get(type(module).__name__)
            module.enable_cache(SeaCacheConfig(threshold=float(self.threshold),
                                               max_consecutive_cached=int(self.max_consecutive),
                                               raw_vision_callback=raw))
            if raw is not None:
                register(module, StepMetadataHook(StateManager(StepState), self.num_inference_steps), HOOK)

    def detach(self, pipe) -> None:
        for _, module in denoisers_of(pipe):
            unregister(module, (HOOK,))
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()
