"""One stream per call position within a step, for pipelines that name no `cache_context`.

Chroma, FluxKontext (true CFG) and Lumina2 call the transformer twice per step (the prompt, then the negative
prompt) without naming the calls. The first call of a step runs under the backbone's default branch
(`cond_uncond`); a later call at the same timestep runs as `call1`, `call2`, ... so each is its own stream
(SPEC "Any diffusers DiT": a pipeline that sets none has one stream per call position within a step). The hook
sits outside the step hook and only names calls the pipeline left unnamed; it has no `new_forward` (pre- and
post-forward only), so removing a hook inside it leaves it calling the right forward.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import CacheContext

POSITION_HOOK = "ertacache_position"


def position_name(default: str, position: int) -> str:
    """The branch name of the call at `position` (0-based) within a step."""
    return default if position == 0 else f"call{position}"


class PositionHook(ModelHook):
    """Names unnamed transformer calls by their position within the step (same timestep = same step)."""

    _is_stateful = True

    def __init__(self, states):
        super().__init__()
        self.engine_states = states  # the step hook's StreamStates (diffusers sets contexts on it too: same names)
        self.reset_state(None)

    def pre_forward(self, module, *args, **kwargs):
        states = self.engine_states
        if states.name is not None and not self.named:  # the pipeline named this call
            return args, kwargs
        t = kwargs.get("timestep")
        same = t is not None and self.last is not None and _same(t, self.last)
        self.position = self.position + 1 if same else 0
        self.last = t.detach().clone() if isinstance(t, torch.Tensor) else t
        states.set_context(CacheContext(name=position_name(states.default, self.position)))
        self.named = True
        return args, kwargs

    def post_forward(self, module, output):
        if self.named:
            self.engine_states.set_context(None)
            self.named = False
        return output

    def reset_state(self, module):
        if getattr(self, "named", False):
            self.engine_states.set_context(None)
        self.position, self.last, self.named = 0, None, False
        return module


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.to(b.device), b))
    return a == b


def apply_positions(transformer: torch.nn.Module, states) -> None:
    """Attach the position hook outside the step hook (call after `apply_ertacache`)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if POSITION_HOOK in registry.hooks:
        registry.remove_hook(POSITION_HOOK, recurse=False)
    registry.register_hook(PositionHook(states), POSITION_HOOK)


def remove_positions(transformer: torch.nn.Module) -> None:
    """Detach the position hook (a no-op when none is attached)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if POSITION_HOOK in registry.hooks:
        registry.remove_hook(POSITION_HOOK, recurse=False)
