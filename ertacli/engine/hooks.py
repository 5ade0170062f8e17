"""Diffusers hooks that let a controller compute, skip or double-run the transformer's block stack.

One technique, diffusers style (`apply_ertacache(transformer, ErtaCacheConfig(...))`): per-stream `BranchState`
(keyed by the pipeline's `cache_context` name) in a `StreamStates`, a step hook on the transformer, a head hook on
the first block and pass-through hooks on the others. `remove_ertacache` detaches them; no class's `forward` is
reassigned and nothing is written onto diffusers' objects. The caching logic always runs eagerly, outside any
compiled graph (`torch.compiler.disable`); what compiles is each block class's own forward (docs/method.md).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from .config import ErtaCacheConfig, progress_of
from .diffusers_compat import StreamStates, block_layout, unwrap, user_compiled
from .diffusers_compat import block_output  # noqa: F401  (the peer caches' hooks import it from here)

STEP_HOOK = "ertacache_step"
HEAD_HOOK = "ertacache_head"
BLOCK_HOOK = "ertacache_block"


class BranchState(BaseState):
    """What one cache stream (branch) carries between its transformer calls."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.call = -1             # the pipeline call (CallClock id) this state belongs to
        self.step = 0
        self.skip = False          # the block stack is skipped on the call in flight
        self.inject = None         # residual added to h_in when skipping
        self.h_in = None           # hidden state entering the first block, this call
        self.residual = None       # R_k of the last full call (block stack output - input)
        self.cached = None         # R~: the residual a cached step reuses
        self.extra: dict[str, Any] = {}   # controller-owned per-branch values (previous R, v, ...)


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
        B, mb = self.x.shape[0], self.hook.config.micro_batch
        if not mb or B <= mb:
            out = self.hook.forward_fn(*self.args, **self.kwargs)
            self._out_template = out
            return out[0] if isinstance(out, tuple) else out.sample
        st, inject, outs, residuals = self.state, self.state.inject, [], []
        for a in range(0, B, mb):
            args, kwargs = _chunk(self.args, self.kwargs, a, a + mb, B, self.hook.config.unbatched)
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
        if self.hook.config.residual in ("latent", "velocity"):
            v = self._forward()
            st.residual = v - self.x if self.hook.config.residual == "latent" else v
            return v
        st.residual = None
        v = self._forward()
        if st.residual is None:
            raise RuntimeError("the block-stack hooks did not see this call; is the backbone's block list right?")
        return v

    def skipped(self, residual: torch.Tensor) -> torch.Tensor:
        """Cached velocity v~: block stack replaced by h_in + residual (latent: x + residual; velocity: residual)."""
        st = self.state
        if self.hook.config.residual == "latent":
            return self.x + residual
        if self.hook.config.residual == "velocity":
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
    """Transformer-level hook: finds the pipeline call, counts steps per stream, hands each call to the controller."""

    _is_stateful = True

    def __init__(self, states: StreamStates, config: ErtaCacheConfig):
        super().__init__()
        self.states, self.config = states, config
        self.forward_fn = None

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        cfg, stream = self.config, self.states.stream
        scheduler = cfg.scheduler() if cfg.scheduler is not None else None
        call_id = cfg.clock.tick(stream, progress_of(self.states.step_index, kwargs, scheduler))
        state: BranchState = self.states.current()
        if state.call != call_id:
            state.reset()
            state.call = call_id
        k = state.step
        state.step += 1
        if cfg.stream_prefix and self.states.step_index is not None:
            k = int(self.states.step_index)  # several transformers (Wan2.2's experts): k is the pipeline's step
        hidden = cfg.residual == "hidden"
        self.forward_fn = self.fn_ref.original_forward if hidden else own_forward(self, module)
        try:
            return cfg.controller.on_call(TransformerCall(self, args, kwargs, state, k, stream))
        except BaseException:  # an interrupted or refused call: the next transformer call starts a new one
            cfg.clock.end()
            raise

    def reset_state(self, module):
        """diffusers' reset after a pipeline call (transformers with its cache mixin): the next call starts anew."""
        self.states.reset()
        self.config.clock.end()
        return module


class _BlockHook(ModelHook):
    """Shared by the block hooks: the stream state and the block class's argument/return layout."""

    _is_stateful = True

    def __init__(self, states: StreamStates, config: ErtaCacheConfig):
        super().__init__()
        self.states, self.config, self.layout = states, config, None

    def initialize_hook(self, module):
        self.layout = block_layout(type(unwrap(module)))
        return module

    def reset_state(self, module):
        self.states.reset()
        return module


class StackHeadHook(_BlockHook):
    """First block: records h_in; when the call is cached, returns h_in + R~ and the stack is passed through."""

    @torch.compiler.disable
    def new_forward(self, module, *args, **kwargs):
        st = self.states.current()
        st.h_in = self.layout.hidden(args, kwargs)
        if st.skip:
            return self.layout.output(args, kwargs, st.h_in + st.inject)
        return own_forward(self, module)(*args, **kwargs)


class StackBlockHook(_BlockHook):
    """Later blocks: pass through on a cached call; the tail block stores R_k = h_out - h_in on a full call."""

    def __init__(self, states: StreamStates, config: ErtaCacheConfig, is_tail: bool):
        super().__init__(states, config)
        self.is_tail = is_tail

    @torch.compiler.disable
    def new_forward(self, module, *args, **kwargs):
        st = self.states.current()
        if st.skip:
            return self.layout.output(args, kwargs, self.layout.hidden(args, kwargs))
        out = own_forward(self, module)(*args, **kwargs)
        if self.is_tail:
            st.residual = self.layout.hidden_of(out) - st.h_in
        return out


# Compilation (docs/method.md "torch.compile"): each block class's own forward is compiled once and shared by its
# instances (as diffusers' compile_repeated_blocks); the hooks' caching logic stays eager, so cached steps (decided
# before sampling) cause no graph break and no recompilation. Latent mode compiles the transformer's forward.
# It applies when the config asks (`compile=True`) and whenever the user compiled the transformer or its blocks.
_COMPILED: dict[tuple[type, str], Any] = {}


def compiled_forward(cls: type) -> Any:
    """torch.compile of a module class's own `forward` (backend $ERTACACHE_COMPILE_BACKEND, default inductor)."""
    backend = os.environ.get("ERTACACHE_COMPILE_BACKEND", "inductor")
    fn = _COMPILED.get((cls, backend))
    if fn is None:
        fn = _COMPILED[(cls, backend)] = torch.compile(cls.forward, backend=backend)
    return fn


def _compiling(hook: ModelHook, module: torch.nn.Module) -> bool:
    cfg = hook.config
    return cfg.compile or user_compiled(module) or (cfg.compiled is not None and cfg.compiled())


def own_forward(hook: ModelHook, module: torch.nn.Module) -> Any:
    """The forward a hook wraps: compiled when asked and the hook sits on the module's own forward."""
    fn = hook.fn_ref.original_forward
    if getattr(fn, "__func__", None) is type(module).forward and _compiling(hook, module):
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


def _register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def apply_ertacache(transformer: torch.nn.Module, config: ErtaCacheConfig) -> StreamStates:
    """Attach the step hook (and, for hidden-space residuals, the block-stack hooks) driven by `config.controller`.

    `transformer` may be a `torch.compile` wrapper; the hooks go on the module it holds. Returns the stream states.
    """
    transformer = unwrap(transformer)
    remove_ertacache(transformer)
    states = StreamStates(BranchState, config.default_branch, config.stream_prefix)
    if config.residual == "hidden":
        blocks = _blocks(transformer, config.block_lists)
        for i, block in enumerate(blocks[1:], start=1):
            _register(block, StackBlockHook(states, config, is_tail=i == len(blocks) - 1), BLOCK_HOOK)
        if len(blocks) == 1:
            _register(blocks[0], StackBlockHook(states, config, is_tail=True), BLOCK_HOOK)
        _register(blocks[0], StackHeadHook(states, config), HEAD_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(StepHook(states, config), STEP_HOOK)
    registry.invalidate_child_registries_cache()
    return states


def attached_config(transformer: torch.nn.Module) -> ErtaCacheConfig | None:
    """The config of the ertacache hooks on `transformer` (or the module a compile wrapper holds), else None."""
    hook = HookRegistry.check_if_exists_or_initialize(unwrap(transformer)).get_hook(STEP_HOOK)
    return None if hook is None else hook.config


def remove_ertacache(transformer: torch.nn.Module) -> None:
    """Detach every ertacache hook from the transformer and its blocks (a no-op when none is attached)."""
    registry = HookRegistry.check_if_exists_or_initialize(unwrap(transformer))
    for name in (STEP_HOOK, HEAD_HOOK, BLOCK_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


def reset_ertacache(transformer: torch.nn.Module) -> None:
    """Forget all per-stream state; the next transformer call starts a new pipeline call."""
    HookRegistry.check_if_exists_or_initialize(unwrap(transformer)).reset_stateful_hooks(recurse=True)
