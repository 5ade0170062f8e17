"""EasyCache (Zhou et al., "EasyCache: Training-Free Video Diffusion Acceleration via Runtime-Adaptive Caching").

Runtime-adaptive reuse of the whole transformer call, per cache stream (CFG branch), as our own hook:

- after the warm-up steps, each computed call t measures the transformation rate
  k = mean|v_t - v_c| / mean|x_t - x_c| against the previous computed call c (v: the model output, x: its input),
  and caches the transformation Δ = v_t - x_t;
- on later calls the output change is estimated from the input change alone, ε = k · mean|x - x_prev| / mean|v_c|,
  and accumulated; while the sum stays below the threshold the call is skipped and returns x + Δ; when it reaches
  the threshold the call is computed and the sum resets to 0.

Warm-up steps and the last step are always computed; threshold 0 is off (every call computed). On a pipeline
with several denoisers (Wan2.2's two experts) each expert has its own states (its first two calls computed, as
k needs two); the step is the pipeline's. A skipped call
runs no block at all, so NFE counts it as cached like every other peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.hooks import ModelHook

from .peer_hooks import denoisers_of, ensure_context, register, sample_of, step_clock, unregister, with_sample

HOOK = "easycache"


def mean_abs(t) -> float:
    return float(t.float().abs().mean().item())


@dataclass
class EasyCacheConfig:
    """threshold: accumulated estimated output change that forces a computed call (0: off); warmup: computed steps."""

    threshold: float = 0.0
    warmup: int = 1
    num_inference_steps: int = 0
    trace: list | None = field(default=None, repr=False)  # (branch, step, computed, accumulator, k) when given

    def attach(self, pipe) -> None:
        """On every denoiser, one state per expert (Wan2.2: `transformer` and `transformer_2`)."""
        clock = step_clock(pipe)
        for _, module in denoisers_of(pipe):
            apply_easycache(module, self, clock)

    def detach(self, pipe) -> None:
        for _, module in denoisers_of(pipe):
            remove_easycache(module)


class EasyCacheState:
    """One stream: step counter, accumulator, previous input, last computed (input, output), rate k and Δ."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.step, self.acc, self.k = 0, 0.0, None
        self.prev_x = self.x_c = self.v_c = self.delta = self.template = None


class EasyCacheHook(ModelHook):
    """Transformer level: decide, then compute the call or return x + Δ."""

    _is_stateful = True

    def __init__(self, states, config: EasyCacheConfig, clock=None):
        super().__init__()
        self.states, self.config, self.clock = states, config, clock

    def reset_state(self, module):
        self.states.reset()
        return module

    def decide(self, st: EasyCacheState, x) -> bool:
        """True when the call must be computed; accumulates the estimated change (reset to 0 when computed).
        The step: the stream's own call count, or the pipeline's step (`clock`) when experts share the run."""
        cfg = self.config
        k = st.step if self.clock is None else self.clock()
        forced = k < max(cfg.warmup, 1) or k >= cfg.num_inference_steps - 1 or st.k is None or st.delta is None
        if not forced:
            st.acc += st.k * mean_abs(x - st.prev_x) / max(mean_abs(st.v_c), 1e-12)
        compute = forced or cfg.threshold <= 0 or st.acc >= cfg.threshold
        if cfg.trace is not None:
            cfg.trace.append((self.states._context.name, k, compute, st.acc, st.k))
        if compute:
            st.acc = 0.0
        return compute

    def new_forward(self, module, *args, **kwargs):
        ensure_context(self.states)
        st = self.states.get_state()
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        compute = self.decide(st, x)
        st.step, st.prev_x = st.step + 1, x.detach()
        if not compute:
            return with_sample(st.template, x + st.delta if st.delta.shape == x.shape else st.delta,
                               kwargs.get("return_dict", True))
        out = self.fn_ref.original_forward(*args, **kwargs)
        v = sample_of(out).detach()
        if st.v_c is not None:
            st.k = mean_abs(v - st.v_c) / max(mean_abs(x - st.x_c), 1e-12)
        st.x_c, st.v_c, st.template = x.detach(), v, out
        st.delta = v - x if v.shape == x.shape else v
        return out


def apply_easycache(transformer, config: EasyCacheConfig, clock=None):
    """Attach EasyCache to a transformer; returns the StateManager. `clock()`: the pipeline's step, when this
    transformer is one expert of several (else its own call count)."""
    from diffusers.hooks.hooks import StateManager

    remove_easycache(transformer)
    states = StateManager(EasyCacheState)
    register(transformer, EasyCacheHook(states, config, clock), HOOK)
    return states


def remove_easycache(transformer) -> None:
    """Detach EasyCache (a no-op when it is not attached)."""
    unregister(transformer, (HOOK,))
