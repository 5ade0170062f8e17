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


class CallClock:
    """Counts pipeline calls; shared by every transformer a controller drives (one `begin()` per pipeline call).

    Each transformer call reports its stream and its progress p in the denoising loop (the `cache_context`
    step_index when the pipeline gives one, else minus the largest timestep). A new pipeline call starts when
    p went back below the latest progress of any stream or of this stream, when a step index repeats, when a
    call without either comes after the stream's T calls, or after `end()` (diffusers' reset, `Session.fresh`).
    """

    def __init__(self, controller):
        self.controller = controller
        self.call = 0                  # id of the pipeline call in flight
        self.ended = True              # the next transformer call starts a new pipeline call
        self.last: float | None = None                    # progress of the latest transformer call, any stream
        self.seen: dict[str, tuple[float | None, int]] = {}   # stream -> (its last progress, its calls) this call

    def end(self) -> None:
        self.ended = True

    def tick(self, stream: str, progress: tuple[float, bool] | None) -> int:
        """Account one transformer call of `stream`; returns the id of the pipeline call it belongs to.

        `progress` is (p, exact): exact when p is the pipeline's step index (a stream never repeats it in a call).
        """
        if self.ended or self._restarted(stream, progress):
            self.call += 1
            self.ended, self.last = False, None
            self.seen.clear()
            self.controller.begin()
        p = None if progress is None else progress[0]
        self.seen[stream] = (p, self.seen.get(stream, (None, 0))[1] + 1)
        if p is not None:
            self.last = p
        return self.call

    def _restarted(self, stream: str, progress: tuple[float, bool] | None) -> bool:
        p, exact = progress if progress is not None else (None, False)
        if stream not in self.seen:
            return p is not None and self.last is not None and p < self.last
        prev, count = self.seen[stream]
        if p is None or prev is None:
            return count >= self.controller.T
        return p < prev or (exact and p == prev)


def progress_of(step_index: int | None, kwargs: dict) -> tuple[float, bool] | None:
    """(p, exact): where a transformer call is in the denoising loop, p growing through a pipeline call.

    The pipeline's `cache_context` step index when it gives one (exact), else minus the call's largest timestep
    (the timestep falls from step to step; equal timesteps do not start a new call); None without either.
    """
    if step_index is not None:
        return float(step_index), True
    t = kwargs.get("timestep")
    if isinstance(t, torch.Tensor) and t.numel():
        return -float(t.detach().max()), False
    return (-float(t), False) if isinstance(t, (int, float)) else None


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

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        self.block_lists = tuple(self.block_lists)
        self.unbatched = tuple(self.unbatched)
        if self.clock is None:
            self.clock = CallClock(self.controller)
