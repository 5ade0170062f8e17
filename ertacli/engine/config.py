"""What `apply_ertacache(transformer, config)` takes, and how the engine finds the start of a pipeline call.

A pipeline call is found from the transformer calls themselves (docs/method.md "Where a pipeline call starts"),
so repeated calls work whether or not the transformer class resets diffusers hooks after each call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

RESIDUALS = ("hidden", "latent", "velocity")
DEFAULT_BRANCH = "default"


@dataclass(frozen=True)
class Progress:
    """Where one transformer call is in the denoising loop (docs/method.md "Where a pipeline call starts")."""

    index: int | None = None   # the step index: cache_context's, else the scheduler's (-1 before its first step)
    exact: bool = False        # a stream never sees this index twice in one pipeline call
    t: float | None = None     # the call's timestep (mean over its elements), in the pipeline's own direction


class CallClock:
    """Counts pipeline calls; shared by every transformer a controller drives (one `begin()` per pipeline call).

    Each transformer call reports its stream and its `Progress`. A new pipeline call starts when the call lies
    before the latest call of any stream or of this stream (step index lower, else the timestep gone back against
    the direction learned from a stream's first two timesteps), when a stream sees an exact step index again,
    when a call without step index or timestep comes after the stream's T calls, or after `end()` (diffusers'
    reset, `Session.fresh`, a call that raised).
    """

    def __init__(self, controller):
        self.controller = controller
        self.call = 0                  # id of the pipeline call in flight
        self.ended = True              # the next transformer call starts a new pipeline call
        self.direction: int | None = None    # +1 timesteps rise through a call, -1 they fall; None: not seen yet
        self.last: Progress | None = None    # progress of the latest transformer call, any stream
        self.seen: dict[str, tuple[Progress | None, int]] = {}   # stream -> (its last progress, its calls) this call

    def end(self) -> None:
        self.ended = True

    def steps(self, stream: str) -> int:
        """How many calls `stream` made in the pipeline call in flight."""
        return self.seen.get(stream, (None, 0))[1]

    def tick(self, stream: str, progress: Progress | None) -> int:
        """Account one transformer call of `stream`; returns the id of the pipeline call it belongs to."""
        if self.ended or self._restarted(stream, progress):
            self.call += 1
            self.ended, self.last = False, None
            self.seen.clear()
            self.controller.begin()
        self.seen[stream] = (progress, self.steps(stream) + 1)
        if progress is not None:
            self.last = progress
        return self.call

    def _restarted(self, stream: str, cur: Progress | None) -> bool:
        if stream not in self.seen:  # another stream ran later in the loop: this call starts a new one
            return cur is not None and self.last is not None and bool(self._before(cur, self.last, learn=False))
        prev, count = self.seen[stream]
        if cur is not None and prev is not None:
            if cur.exact and prev.exact and cur.index == prev.index:
                return True
            before = self._before(cur, prev, learn=count < self.controller.T)
            if before is not None:
                return before
        return count >= self.controller.T

    def _before(self, cur: Progress, prev: Progress, learn: bool) -> bool | None:
        """Whether `cur` lies before `prev` in the loop; None when neither its index nor its timestep says.

        With no direction seen yet, a stream's second timestep (`learn`) sets it and is not before its first.
        """
        if cur.index is not None and prev.index is not None and cur.index != prev.index:
            return cur.index < prev.index
        if cur.t is None or prev.t is None:
            return None
        if cur.t == prev.t:
            return False
        if self.direction is None:
            if not learn:
                return None
            self.direction = 1 if cur.t > prev.t else -1
            return False
        return (cur.t - prev.t) * self.direction < 0


def scheduler_index(scheduler) -> int | None:
    """The scheduler's step index (-1 before the first `step()` of a call); None when it keeps none."""
    try:
        index = scheduler.step_index
    except AttributeError:
        return None
    if index is None:
        return -1
    return int(index) if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.numel() == 1) else None


def progress_of(step_index: int | None, kwargs: dict, scheduler=None) -> Progress | None:
    """Where a transformer call is in the denoising loop; None when nothing says.

    The index is the pipeline's `cache_context` step index (exact) when it gives one, else the step index of the
    pipeline's scheduler when the engine knows the pipeline (exact before the scheduler's first step: every new
    call passes there). The timestep is the mean of the call's `timestep` (per-token timesteps too).
    """
    t = kwargs.get("timestep")
    if isinstance(t, torch.Tensor):
        t = float(t.detach().double().mean()) if t.numel() else None
    elif isinstance(t, (int, float)):
        t = float(t)
    else:
        t = None
    if step_index is not None:
        return Progress(int(step_index), True, t)
    index = scheduler_index(scheduler) if scheduler is not None else None
    if index is None and t is None:
        return None
    return Progress(index, index == -1, t)


@dataclass
class ErtaCacheConfig:
    """Everything the hooks on one transformer need (diffusers style: `apply_ertacache(transformer, config)`).

    `stream_prefix` names this transformer's streams when a pipeline has several denoisers: with
    `stream_prefix="high/"` the pipeline's `cond` calls are the controller's stream `high/cond`. Transformers of
    one pipeline share a controller and a `CallClock` (`clock=`); each gets its own config and prefix.
    """

    controller: Any                           # on_call(call), begin(), T: the mode (record/search/apply/fit)
    block_lists: tuple[str, ...] = ()         # transformer attributes holding the block stack (hidden residuals)
    residual: str = "hidden"                  # hidden | latent | velocity
    micro_batch: int = 0                      # run transformer calls in chunks of this many samples (0: whole)
    unbatched: tuple[str, ...] = ()           # keyword arguments never split into micro-batches
    default_branch: str = DEFAULT_BRANCH      # stream name of calls made outside any cache_context
    stream_prefix: str = ""                   # prepended to every stream name of this transformer
    compile: bool = False                     # torch.compile each block class's own forward once (latent: the model)
    compiled: Callable[[], bool] | None = None  # also compile when this says the user compiled the model
    clock: CallClock | None = field(default=None, repr=False)
    scheduler: Callable[[], Any] | None = field(default=None, repr=False)  # the pipeline's scheduler at call time

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        self.block_lists = tuple(self.block_lists)
        self.unbatched = tuple(self.unbatched)
        if self.clock is None:
            self.clock = CallClock(self.controller)
