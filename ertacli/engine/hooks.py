"""Diffusers hooks that let a controller compute, skip or double-run the transformer's block stack.

One technique, diffusers style: a shared `StateManager` of per-branch `BranchState` (keyed by the pipeline's
`cache_context` name), a step hook on the transformer, a head hook on the first block and pass-through hooks on
the others. `apply_ertacache` / `remove_ertacache` attach and detach them; no class's `forward` is reassigned.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext

STEP_HOOK = "ertacache_step"
HEAD_HOOK = "ertacache_head"
BLOCK_HOOK = "ertacache_block"
DEFAULT_BRANCH = "default"


class BranchState(BaseState):
    """What one cache stream (branch) carries between its transformer calls."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.step = 0
        self.skip = False          # the block stack is skipped on the call in flight
        self.inject = None         # residual added to h_in when skipping
        self.h_in = None           # hidden state entering the first block, this call
        self.residual = None       # R_k of the last full call (block stack output - input)
        self.cached = None         # R~: the residual a cached step reuses
        self.extra: dict[str, Any] = {}   # controller-owned per-branch values (previous R, v, ...)


def _ensure_context(states: StateManager) -> None:
    """Pipelines that set no cache_context run under the backbone's registered default branch name."""
    if states._context is None:
        states.set_context(CacheContext(name=getattr(states, "default_branch", DEFAULT_BRANCH)))


class TransformerCall:
    """One transformer call in flight: run it with the block stack computed or skipped, rebuild the output."""

    def __init__(self, hook: "StepHook", args: tuple, kwargs: dict, state: BranchState, k: int, branch: str):
        self.hook, self.args, self.kwargs = hook, args, dict(kwargs)
        self.state, self.k, self.branch = state, k, branch
        self._out_template = None

    @property
    def x(self) -> torch.Tensor:
        """The latent input x_k in the model's own layout."""
        return self.kwargs["hidden_states"] if "hidden_states" in self.kwargs else self.args[0]

    def set_timestep_ratio(self, ratio: float) -> None:
        """Query the model at s'_k: scale the timestep input by s'_k / s_k (flow matching: t is proportional to sigma)."""
        if ratio == 1.0:
            return
        if "timestep" not in self.kwargs:
            raise RuntimeError("timestep adjustment needs the pipeline to pass `timestep=` by keyword")
        self.kwargs["timestep"] = self.kwargs["timestep"] * ratio

    def _forward(self) -> torch.Tensor:
        """The original forward, in micro-batches when configured; R_k and outputs are re-assembled whole."""
        B, mb = self.x.shape[0], self.hook.micro_batch
        if not mb or B <= mb:
            out = self.hook.forward_fn(*self.args, **self.kwargs)
            self._out_template = out
            return out[0] if isinstance(out, tuple) else out.sample
        st, inject, outs, residuals = self.state, self.state.inject, [], []
        for a in range(0, B, mb):
            args, kwargs = _chunk(self.args, self.kwargs, a, a + mb, B, self.hook.unbatched)
            st.inject = None if inject is None else inject[a:a + mb]
            if inject is None:
                st.residual = None
            out = self.hook.forward_fn(*args, **kwargs)
            self._out_template = out
            outs.append(out[0] if isinstance(out, tuple) else out.sample)
            residuals.append(st.residual)
        st.inject = inject
        if residuals[0] is not None and inject is None:
            st.residual = torch.cat(residuals)
        return torch.cat(outs)

    def compute(self) -> torch.Tensor:
        """Full call; afterwards `state.residual` holds R_k in the configured residual space."""
        st = self.state
        st.skip, st.inject = False, None
        if self.hook.residual in ("latent", "velocity"):
            v = self._forward()
            st.residual = v - self.x if self.hook.residual == "latent" else v
            return v
        st.residual = None
        v = self._forward()
        if st.residual is None:
            raise RuntimeError("the block-stack hooks did not see this call; is the backbone's block list right?")
        return v

    def skipped(self, residual: torch.Tensor) -> torch.Tensor:
        """Cached velocity v~: block stack replaced by h_in + residual (latent: x + residual; velocity: residual)."""
        st = self.state
        if self.hook.residual == "latent":
            return self.x + residual
        if self.hook.residual == "velocity":
            return residual
        st.skip, st.inject = True, residual
        try:
            return self._forward()
        finally:
            st.skip, st.inject = False, None

    def wrap(self, v: torch.Tensor) -> Any:
        """Return v in the structure the pipeline expects (tuple or output dataclass)."""
        out = self._out_template
        if out is None:
            return (v,) if not self.kwargs.get("return_dict", True) else _output_cls()(sample=v)
        return (v,) + tuple(out[1:]) if isinstance(out, tuple) else type(out)(sample=v)


def _chunk(args: tuple, kwargs: dict, a: int, b: int, B: int, unbatched: tuple[str, ...]):
    """Slice every tensor argument whose first dimension is the batch, except the backbone's unbatched ones."""
    cut = lambda v: v[a:b] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v
    return (tuple(cut(v) for v in args),
            {k: (v if k in unbatched else cut(v)) for k, v in kwargs.items()})


def _output_cls():
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput


class StepHook(ModelHook):
    """Transformer-level hook: counts steps per branch and hands each call to the controller."""

    _is_stateful = True

    def __init__(self, states: StateManager, controller, residual: str, micro_batch: int = 0,
                 unbatched: tuple[str, ...] = ()):
        super().__init__()
        self.states, self.controller, self.residual = states, controller, residual
        self.micro_batch, self.unbatched = micro_batch, unbatched

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        _ensure_context(self.states)
        state: BranchState = self.states.get_state()
        name = self.states.context.name
        k = state.step
        state.step += 1
        shared = getattr(self.states, "shared_steps", None)
        if shared is not None:  # several transformers (Wan2.2 experts): k is the step, counted over all of them
            k = shared[name] = shared.get(name, -1) + 1
        self.forward_fn = own_forward(self, module) if self.residual != "hidden" else self.fn_ref.original_forward
        call = TransformerCall(self, args, kwargs, state, k, getattr(self.states, "prefix", "") + name)
        return self.controller.on_call(call)

    def reset_state(self, module):
        """The pipeline's own reset after each call (diffusers `maybe_free_model_hooks`): branch state and counters."""
        self.states.reset()
        if getattr(self.states, "shared_steps", None) is not None:
            self.states.shared_steps.clear()
        on_reset = getattr(self.controller, "on_reset", None)
        if on_reset is not None:
            on_reset()
        return module


def block_output(meta, args, kwargs, hidden: torch.Tensor):
    """A block's return value with `hidden` as its hidden states and the text stream passed through."""
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    enc = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    ret = [None] * (max(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) + 1)
    ret[meta.return_hidden_states_index] = hidden
    ret[meta.return_encoder_hidden_states_index] = enc
    return tuple(ret)


class _BlockHook(ModelHook):
    """Shared by the block hooks: the branch state and the block class's argument/return layout."""

    _is_stateful = True

    def __init__(self, states: StateManager):
        super().__init__()
        self.states, self.meta = states, None

    def initialize_hook(self, module):
        self.meta = TransformerBlockRegistry.get(module.__class__)
        return module

    def reset_state(self, module):
        self.states.reset()
        return module

    def _state(self) -> BranchState:
        _ensure_context(self.states)
        return self.states.get_state()

    def _hidden(self, args, kwargs) -> torch.Tensor:
        return self.meta._get_parameter_from_args_kwargs(self.meta.hidden_states_argument_name, args, kwargs)


class StackHeadHook(_BlockHook):
    """First block: records h_in; when the call is cached, returns h_in + R~ and the stack is passed through."""

    def new_forward(self, module, *args, **kwargs):
        st = self._state()
        st.h_in = self._hidden(args, kwargs)
        if st.skip:
            return block_output(self.meta, args, kwargs, st.h_in + st.inject)
        return own_forward(self, module)(*args, **kwargs)


class StackBlockHook(_BlockHook):
    """Later blocks: pass through on a cached call; the tail block stores R_k = h_out - h_in on a full call."""

    def __init__(self, states: StateManager, is_tail: bool):
        super().__init__(states)
        self.is_tail = is_tail

    def new_forward(self, module, *args, **kwargs):
        st = self._state()
        if st.skip:
            return block_output(self.meta, args, kwargs, self._hidden(args, kwargs))
        out = own_forward(self, module)(*args, **kwargs)
        if self.is_tail:
            h_out = out[self.meta.return_hidden_states_index] if isinstance(out, tuple) else out
            st.residual = h_out - st.h_in
        return out


# Optional regional compilation (Session(..., compile=True)): each block class's own forward is compiled once and
# shared by its instances (diffusers' compile_repeated_blocks); the hooks' caching logic stays eager, so cached
# steps (decided before sampling) cause no graph break and no recompilation. Latent mode compiles the transformer.
_COMPILED: dict[tuple[type, str], Any] = {}


def compiled_forward(cls: type) -> Any:
    """torch.compile of a module class's own `forward` (backend $ERTACACHE_COMPILE_BACKEND, default inductor)."""
    backend = os.environ.get("ERTACACHE_COMPILE_BACKEND", "inductor")
    fn = _COMPILED.get((cls, backend))
    if fn is None:
        fn = _COMPILED[(cls, backend)] = torch.compile(cls.forward, backend=backend)
    return fn


def own_forward(hook: ModelHook, module: torch.nn.Module) -> Any:
    """The forward a hook wraps: compiled when the session asks and the hook sits on the module's own forward."""
    fn = hook.fn_ref.original_forward
    if getattr(hook.states, "compile", False) and getattr(fn, "__func__", None) is type(module).forward:
        return functools.partial(compiled_forward(type(module)), module)
    return fn


def _blocks(transformer: torch.nn.Module, block_lists: tuple[str, ...]) -> list[torch.nn.Module]:
    blocks = []
    for name in block_lists:
        group = getattr(transformer, name, None)
        if group is None:
            raise RuntimeError(f"{type(transformer).__name__} has no block list '{name}' (backbone registry)")
        blocks.extend(group)
    if not blocks:
        raise RuntimeError(f"{type(transformer).__name__}: no transformer blocks found in {block_lists}")
    return blocks


def apply_ertacache(transformer: torch.nn.Module, block_lists: tuple[str, ...], controller,
                    residual: str = "hidden", micro_batch: int = 0, unbatched: tuple[str, ...] = (),
                    default_branch: str = DEFAULT_BRANCH, compile: bool = False, prefix: str = "",
                    shared_steps: dict | None = None) -> StateManager:
    """Attach the step hook (and, for hidden-space residuals, the block-stack hooks) driven by `controller`.

    `prefix` names this transformer's streams (`high/` + branch); `shared_steps`, one dict shared by the
    transformers of a pipeline, counts the steps over all of them (a stream's k is the pipeline's step).
    """
    remove_ertacache(transformer)
    states = StateManager(BranchState)
    states.prefix, states.shared_steps = prefix, shared_steps
    states.default_branch = default_branch
    states.compile = compile  # regional torch.compile of the blocks (latent mode: of the transformer)
    if residual == "hidden":
        blocks = _blocks(transformer, block_lists)
        for i, block in enumerate(blocks[1:], start=1):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                StackBlockHook(states, is_tail=i == len(blocks) - 1), BLOCK_HOOK)
        if len(blocks) == 1:
            HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(
                StackBlockHook(states, is_tail=True), BLOCK_HOOK)
        HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(StackHeadHook(states), HEAD_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(StepHook(states, controller, residual, micro_batch, unbatched), STEP_HOOK)
    registry.invalidate_child_registries_cache()
    return states


def remove_ertacache(transformer: torch.nn.Module) -> None:
    """Detach every ertacache hook from the transformer and its blocks (a no-op when none is attached)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in (STEP_HOOK, HEAD_HOOK, BLOCK_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


def reset_ertacache(transformer: torch.nn.Module) -> None:
    """Forget all per-branch state before a new pipeline call."""
    HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)
