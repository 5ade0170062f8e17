"""Shared pieces of the peers we implement ourselves as diffusers-style hooks (TeaCache, EasyCache).

Each such peer is a config dataclass with `attach(pipe)` / `detach(pipe)`, per-branch state in a diffusers
`StateManager` (keyed by the pipeline's `cache_context` name, so CFG branches are separate streams) and
`ModelHook`s registered through a `HookRegistry`; no class's `forward` is reassigned.
"""

from __future__ import annotations

import inspect

from ..engine.hooks import block_output  # noqa: F401  (re-exported for the peer hooks)

DEFAULT_BRANCH = "default"


def denoisers_of(pipe) -> list[tuple[str, object]]:
    """(attribute, module) of every denoiser the pipeline holds: `transformer`, and Wan2.2's second expert
    `transformer_2` (the same components the engine hooks); a peer caches all of them or refuses."""
    from ..backbones.discover import denoisers

    return [(name, getattr(pipe, name)) for name in denoisers(pipe)]


def refuse_experts(peer: str, pipe, why: str) -> None:
    """One line, never a half-cached run: `peer` cannot cache every denoiser of a pipeline holding several."""
    from ..errors import UserError

    names = [name for name, _ in denoisers_of(pipe)]
    if len(names) > 1:
        raise UserError(f"{peer} cannot cache every denoiser: {type(pipe).__name__} denoises with {' and '.join(names)}, and {why}; "
                        f"caching only `transformer` would run the pipeline half-cached")


def step_clock(pipe):
    """With several denoisers: the pipeline's denoising step (its scheduler's step index, None before the first
    step = 0), so a per-expert state still knows the run's first and last step; None with one denoiser (its own
    call count is the step) or a scheduler without a step index."""
    scheduler = getattr(pipe, "scheduler", None)
    if len(denoisers_of(pipe)) < 2 or not hasattr(scheduler, "step_index"):
        return None
    return lambda: int(scheduler.step_index or 0)


def ensure_context(states) -> None:
    """Calls made outside any `cache_context` share one stream named `default`."""
    from diffusers.hooks.hooks import CacheContext

    if states._context is None:
        states.set_context(CacheContext(name=DEFAULT_BRANCH))


def rel_l1(now, before) -> float:
    """Relative L1 change: mean |now - before| / mean |before| (the statistic TeaCache and EasyCache use)."""
    return float(((now.float() - before.float()).abs().mean() / (before.float().abs().mean() + 1e-12)).item())


def block_meta(module):
    """The diffusers block registry's argument/return layout of a transformer block."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    return TransformerBlockRegistry.get(type(module))


def block_hidden(meta, args, kwargs):
    """The image-stream hidden states a block was called with."""
    return meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)


def out_hidden(meta, out):
    """The hidden states in a block's return value."""
    return out[meta.return_hidden_states_index] if isinstance(out, tuple) else out


def call_argument(module, name: str, args, kwargs):
    """Argument `name` of a module's forward call, however it was passed (None when absent)."""
    bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
    return bound.get(name)


def sample_of(out):
    """The prediction in a transformer's return value (tuple or output dataclass)."""
    return out[0] if isinstance(out, tuple) else out.sample


def with_sample(out_like, v, return_dict: bool):
    """`v` in the structure the pipeline expects: like a previous output, else a tuple / output dataclass."""
    if out_like is None:
        if not return_dict:
            return (v,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=v)
    return (v,) + tuple(out_like[1:]) if isinstance(out_like, tuple) else type(out_like)(sample=v)


def transformer_blocks(transformer, block_lists: tuple[str, ...]) -> list:
    """Every block of the backbone's registered block lists, in call order."""
    return [b for name in block_lists for b in (getattr(transformer, name, None) or [])]


def register(module, hook, name: str) -> None:
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def unregister(transformer, names: tuple[str, ...]) -> None:
    """Remove the named hooks from the transformer and every module under it (a no-op when absent)."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in names:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
