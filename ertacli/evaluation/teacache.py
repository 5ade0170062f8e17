"""TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model"), as our own hook.

Per cache stream (CFG branch): the relative L1 change of the first block's timestep-modulated input between
consecutive calls, rescaled by a polynomial fitted on uncached runs, is accumulated; while the sum stays below the
threshold the whole block stack is skipped and the residual of the last computed call (stack output - input) is
added instead; when it reaches the threshold the call is computed and the sum resets to 0. The first and the last
step are always computed. Threshold 0 is off (every call computed). On a pipeline with several denoisers
(Wan2.2's two experts) each expert has its own states and its first call is computed; the step is the pipeline's.

The modulated input per transformer class is registered data (`MODULATED_INPUT`): Flux, the first double block's
`norm1(hidden, emb=temb)`; Wan, the first block's `norm1(hidden) * (1 + scale_msa) + shift_msa` from its
`scale_shift_table + temb`. Other transformers fall back to the first block's hidden input (a documented proxy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.hooks import ModelHook

from .peer_hooks import (block_hidden, block_meta, block_output, call_argument, denoisers_of, ensure_context,
                         out_hidden, register, rel_l1, sample_of, step_clock, transformer_blocks, unregister)

HOOKS = ("teacache_step", "teacache_head", "teacache_block")


def _flux_modulated(block, hidden, temb):
    return block.norm1(hidden, emb=temb)[0]


def _wan_modulated(block, hidden, temb):
    if temb.ndim == 4:  # (B, seq, 6, D): Wan 2.2 TI2V
        shift, scale = [t.squeeze(2) for t in (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]]
    else:
        shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    return block.norm1(hidden.float()) * (1 + scale) + shift


MODULATED_INPUT = {"FluxTransformer2DModel": _flux_modulated, "WanTransformer3DModel": _wan_modulated}
"""Transformer class name -> (first block, its hidden input, its temb) -> the timestep-modulated input."""


def modulated_input_kind(transformer) -> str:
    """Which input TeaCache watches on this transformer (for the peer row's note)."""
    name = type(transformer).__name__
    return "first block's modulated input" if name in MODULATED_INPUT else "first block's hidden input (proxy)"


def poly(coefficients, x: float) -> float:
    """numpy.polyval order (highest power first), in plain Python floats (bit-reproducible)."""
    y = 0.0
    for c in coefficients:
        y = y * x + float(c)
    return y


@dataclass
class TeaCacheConfig:
    """threshold: accumulated rescaled distance that forces a computed call (0: off); coefficients: highest first."""

    threshold: float = 0.0
    num_inference_steps: int = 0
    coefficients: tuple = (1.0, 0.0)
    block_lists: tuple = ()
    record: list | None = field(default=None, repr=False)  # (branch, step, x_rel, y_rel) appended when given
    trace: list | None = field(default=None, repr=False)  # (branch, step, computed, accumulator before reset)

    def attach(self, pipe) -> None:
        """On every denoiser, one state per expert (Wan2.2: `transformer` and `transformer_2`)."""
        clock = step_clock(pipe)
        for _, module in denoisers_of(pipe):
            apply_teacache(module, self, clock)

    def detach(self, pipe) -> None:
        for _, module in denoisers_of(pipe):
            remove_teacache(module)


class TeaCacheState:
    """One stream's accumulator, previous modulated input / output, and the residual a skipped call adds."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.step, self.acc, self.skip = 0, 0.0, False
        self.prev_mod = self.prev_out = self.residual = self.h_in = None
        self.x_rel = None


class _Hook(ModelHook):
    _is_stateful = True

    def __init__(self, states, config: TeaCacheConfig):
        super().__init__()
        self.states, self.config, self.meta = states, config, None

    def reset_state(self, module):
        self.states.reset()
        return module

    def state(self) -> TeaCacheState:
        ensure_context(self.states)
        return self.states.get_state()


class TeaCacheStepHook(_Hook):
    """Transformer level: records (x_rel, y_rel) of each call when asked (the coefficient fit's data)."""

    def new_forward(self, module, *args, **kwargs):
        out = self.fn_ref.original_forward(*args, **kwargs)
        st, rec = self.state(), self.config.record
        y = sample_of(out)
        if rec is not None and st.prev_out is not None and st.x_rel is not None:
            rec.append((self.states._context.name, st.step - 1, st.x_rel, rel_l1(y, st.prev_out)))
        st.prev_out = y.detach()
        return out


class _BlockHook(_Hook):
    def initialize_hook(self, module):
        self.meta = block_meta(module)
        return module


class TeaCacheHeadHook(_BlockHook):
    """First block: the decision. Skipped call: h_in + residual, and the later blocks pass through."""

    def __init__(self, states, config, modulated, clock=None):
        super().__init__(states, config)
        self.modulated, self.clock = modulated, clock

    def decide(self, st: TeaCacheState, mod) -> bool:
        """True when this call must be computed; updates the accumulator (reset to 0 on a computed call).
        The step: the stream's own call count, or the pipeline's step (`clock`) when experts share the run."""
        cfg = self.config
        k = st.step if self.clock is None else self.clock()
        st.x_rel = None if st.prev_mod is None else rel_l1(mod, st.prev_mod)
        forced = k == 0 or k >= cfg.num_inference_steps - 1 or st.x_rel is None or st.residual is None
        if not forced:
            st.acc += poly(cfg.coefficients, st.x_rel)
        compute = forced or cfg.threshold <= 0 or st.acc >= cfg.threshold
        if cfg.trace is not None:
            cfg.trace.append((self.states._context.name, k, compute, st.acc))
        if compute:
            st.acc = 0.0
        return compute

    def new_forward(self, module, *args, **kwargs):
        st = self.state()
        hidden = block_hidden(self.meta, args, kwargs)
        if self.modulated is None:
            mod = hidden
        else:
            mod = self.modulated(module, hidden, call_argument(module, "temb", args, kwargs))
        compute = self.decide(st, mod)
        st.prev_mod, st.step, st.skip, st.h_in = mod.detach(), st.step + 1, not compute, hidden
        if not compute:
            return block_output(self.meta, args, kwargs, hidden + st.residual)
        return self.fn_ref.original_forward(*args, **kwargs)


class TeaCacheBlockHook(_BlockHook):
    """Later blocks: pass through on a skipped call; the tail stores the stack residual on a computed one."""

    def __init__(self, states, config, is_tail: bool):
        super().__init__(states, config)
        self.is_tail = is_tail

    def new_forward(self, module, *args, **kwargs):
        st = self.state()
        if st.skip:
            return block_output(self.meta, args, kwargs, block_hidden(self.meta, args, kwargs))
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            st.residual = (out_hidden(self.meta, out) - st.h_in).detach()
        return out


def apply_teacache(transformer, config: TeaCacheConfig, clock=None):
    """Attach TeaCache to a transformer whose blocks are `config.block_lists`; returns the StateManager.
    `clock()`: the pipeline's step, when this transformer is one expert of several (else its own call count)."""
    from diffusers.hooks.hooks import StateManager

    remove_teacache(transformer)
    blocks = transformer_blocks(transformer, config.block_lists)
    if len(blocks) < 2:
        raise ValueError(f"TeaCache needs at least two transformer blocks in {config.block_lists}")
    states = StateManager(TeaCacheState)
    for i, block in enumerate(blocks[1:], start=1):
        register(block, TeaCacheBlockHook(states, config, is_tail=i == len(blocks) - 1), HOOKS[2])
    register(blocks[0], TeaCacheHeadHook(states, config, MODULATED_INPUT.get(type(transformer).__name__), clock),
             HOOKS[1])
    register(transformer, TeaCacheStepHook(states, config), HOOKS[0])
    return states


def remove_teacache(transformer) -> None:
    """Detach every TeaCache hook (a no-op when none is attached)."""
    unregister(transformer, HOOKS)
