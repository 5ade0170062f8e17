"""A controller's hooks attached to a pipeline (and its planned scheduler swapped in) for a `with` block."""

from __future__ import annotations

from .hooks import apply_ertacache, remove_ertacache, reset_ertacache
from .positions import apply_positions, remove_positions
from .schedule import make_planned_scheduler

ADJUSTABLE = ("FlowMatchEulerDiscreteScheduler",)


class AdjustmentRefused(ValueError):
    """Timestep adjustment asked for on a scheduler it is not valid for."""


def flow_prediction(scheduler) -> bool:
    """Whether the model predicts flow (so an Euler flow-matching scheduler can replace its own)."""
    cfg = scheduler.config
    return bool(getattr(cfg, "use_flow_sigmas", False) or getattr(cfg, "prediction_type", "") == "flow_prediction")


def check_adjustable(scheduler) -> None:
    """Timestep adjustment is the Euler flow-matching update; refuse it for any other scheduler."""
    name = type(scheduler).__name__
    if name not in ADJUSTABLE or getattr(scheduler.config, "stochastic_sampling", False):
        raise AdjustmentRefused(
            f"timestep adjustment is valid only for Euler flow-matching schedulers ({', '.join(ADJUSTABLE)}); "
            f"this pipeline uses {name}: fit with --adjust off"
            + (", or set model.scheduler=flow-euler" if flow_prediction(scheduler) else ""))


class Session:
    """Hooks on `pipe.transformer` driven by `controller` while the block is open; the scheduler is restored after.

    `backbone` is the registered Backbone of the pipeline (block lists, unbatched args, default branch).
    """

    def __init__(self, pipe, backbone, controller, micro_batch: int = 0, compile: bool = False):
        self.pipe, self.backbone, self.controller = pipe, backbone, controller
        self.micro_batch, self.compile = micro_batch, compile
        self._scheduler = None

    def __enter__(self) -> "Session":
        pipe, bb = self.pipe, self.backbone
        if self.controller.schedule is not None:
            check_adjustable(pipe.scheduler)
        self._scheduler = pipe.scheduler
        hooked = self.transformers()
        shared = {} if len(hooked) > 1 else None
        for transformer, prefix in hooked:
            remove_positions(transformer)  # outermost first: a hook left inside would call a removed one
            states = apply_ertacache(transformer, bb.block_lists, self.controller, self.controller.residual,
                                     self.micro_batch, bb.unbatched_args, bb.default_branch, compile=self.compile,
                                     prefix=prefix, shared_steps=shared)
            apply_positions(transformer, states)  # unnamed calls: one stream per call position in a step
        try:
            if self.controller.schedule is not None:
                pipe.scheduler = make_planned_scheduler(pipe.scheduler, self.controller.schedule)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def transformers(self) -> list:
        """(transformer, stream-name prefix) for every denoiser the backbone names (Wan2.2: both experts)."""
        names = getattr(self.backbone, "transformers", ("transformer",))
        prefixes = getattr(self.backbone, "stream_prefixes", ("",))
        return [(getattr(self.pipe, n), p) for n, p in zip(names, prefixes) if getattr(self.pipe, n, None) is not None]

    def __exit__(self, *exc) -> None:
        self.pipe.scheduler = self._scheduler
        for transformer, _ in self.transformers():
            remove_positions(transformer)
            remove_ertacache(transformer)

    def fresh(self) -> None:
        """Forget every branch's cache and counters before a pipeline call."""
        for transformer, _ in self.transformers():
            reset_ertacache(transformer)
        self.controller.begin()
