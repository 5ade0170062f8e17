"""The one place the engine touches diffusers' (and torch's) non-public pieces; tests/test_engine_hooks.py
(`test_private_helpers_still_behave`) fails loudly when a diffusers or torch upgrade changes any of them.

- `block_layout`: diffusers' private `TransformerBlockRegistry` (hooks/_helpers.py) says where a block class takes
  and returns its hidden states; it is read once per class into our own `BlockLayout`. `block_output` serves
  the peer caches (ertacli/evaluation) that hold diffusers' block metadata themselves.
- `StreamStates`: a `StateManager` subclass; diffusers' `ModelMixin.cache_context(name, ...)` hands the
  `CacheContext` to every `StateManager` held by a stateful hook through `set_context` (public behaviour that
  `cache_context` relies on). We keep our own per-stream states and never read `StateManager` internals.
- `user_compiled`: whether the user compiled a module with `module.compile()` (torch's `_compiled_call_impl`) or
  wrapped it with `torch.compile(module)` (an `OptimizedModule`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager


@dataclass(frozen=True)
class BlockLayout:
    """Where a transformer block class takes and returns its hidden (and text) states."""

    params: tuple[str, ...]             # forward's parameter names after `self`
    hidden_arg: str = "hidden_states"
    encoder_arg: str = "encoder_hidden_states"
    hidden_index: int | None = None     # index of the hidden states in a tuple return (None: returns a tensor)
    encoder_index: int | None = None    # index of the text stream in a tuple return (None: not returned)

    def arg(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[self.params.index(name)]

    def hidden(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.arg(self.hidden_arg, args, kwargs)

    def output(self, args: tuple, kwargs: dict, hidden: torch.Tensor) -> Any:
        """A block's return value with `hidden` as its hidden states and the text stream passed through."""
        if self.encoder_index is None:
            return hidden
        ret = [None] * (max(self.hidden_index, self.encoder_index) + 1)
        ret[self.hidden_index] = hidden
        ret[self.encoder_index] = self.arg(self.encoder_arg, args, kwargs)
        return tuple(ret)

    def hidden_of(self, out: Any) -> torch.Tensor:
        return out[self.hidden_index] if isinstance(out, tuple) else out


_LAYOUTS: dict[type, BlockLayout] = {}


def block_layout(cls: type) -> BlockLayout:
    """The layout of a block class from diffusers' block registry (the only use of `TransformerBlockRegistry`)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        from diffusers.hooks._helpers import TransformerBlockRegistry

        meta = TransformerBlockRegistry.get(cls)
        params = tuple(list(inspect.signature(cls.forward).parameters)[1:])
        layout = _LAYOUTS[cls] = BlockLayout(
            params, meta.hidden_states_argument_name, meta.encoder_hidden_states_argument_name,
            meta.return_hidden_states_index, meta.return_encoder_hidden_states_index)
    return layout


def block_output(meta, args, kwargs, hidden: torch.Tensor):
    """A block's return value with `hidden` as its hidden states, for hooks holding diffusers' block metadata
    (the peer caches in ertacli/evaluation); the engine's own hooks use `BlockLayout.output`."""
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    enc = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    ret = [None] * (max(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) + 1)
    ret[meta.return_hidden_states_index] = hidden
    ret[meta.return_encoder_hidden_states_index] = enc
    return tuple(ret)


class StreamStates(StateManager):
    """Per-stream states of one hooked transformer; the stream name is the pipeline's `cache_context` name.

    diffusers calls `set_context` on entering and leaving `transformer.cache_context(name, ...)`; calls outside any
    context run under `default`. `prefix` names the transformer when a pipeline has several (`high/` -> `high/cond`).
    """

    def __init__(self, state_cls: Callable[[], BaseState], default: str, prefix: str = ""):
        super().__init__(state_cls)
        self.state_cls, self.default, self.prefix = state_cls, default, prefix
        self.streams: dict[str, BaseState] = {}
        self.name: str | None = None
        self.step_index: int | None = None

    def set_context(self, context: CacheContext | None) -> None:
        self.name = None if context is None else context.name
        self.step_index = None if context is None else getattr(context, "step_index", None)

    @property
    def stream(self) -> str:
        return self.prefix + (self.name if self.name is not None else self.default)

    def current(self) -> BaseState:
        """The state of the stream in flight (created on first use)."""
        name = self.stream
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = self.state_cls()
        return state

    def get_state(self) -> BaseState:
        return self.current()

    def reset(self, *args, **kwargs) -> None:
        self.streams.clear()


def user_compiled(module: torch.nn.Module) -> bool:
    """Whether `module` was compiled by `module.compile()` or is a `torch.compile(module)` wrapper."""
    from diffusers.utils.torch_utils import is_compiled_module

    return is_compiled_module(module) or getattr(module, "_compiled_call_impl", None) is not None


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module a `torch.compile(module)` wrapper holds (the module itself otherwise)."""
    from diffusers.utils.torch_utils import unwrap_module

    return unwrap_module(module)
