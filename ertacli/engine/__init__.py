"""The ERTACache engine: hooks on a diffusers transformer driven by one controller per mode."""

from __future__ import annotations

from .controllers import ApplyController, FitController, RecordController, SearchController, l1
from .hooks import apply_ertacache, remove_ertacache, reset_ertacache
from .schedule import LiveSchedule, make_planned_scheduler

__all__ = [
    "ApplyController", "FitController", "RecordController", "SearchController", "Session", "LiveSchedule",
    "apply_ertacache", "remove_ertacache", "reset_ertacache", "l1", "check_adjustable",
]

ADJUSTABLE = ("FlowMatchEulerDiscreteScheduler",)


class AdjustmentRefused(ValueError):
    """Timestep adjustment asked for on a scheduler it is not valid for."""


def check_adjustable(scheduler) -> None:
    """Timestep adjustment is the Euler flow-matching update; refuse it for any other scheduler."""
    name = type(scheduler).__name__
    if name not in ADJUSTABLE or getattr(scheduler.config, "stochastic_sampling", False):
        raise AdjustmentRefused(
            f"timestep adjustment is valid only for Euler flow-matching schedulers ({', '.join(ADJUSTABLE)}); "
            f"this pipeline uses {name}: fit with --adjust off"
            + (", or set model.scheduler=flow-euler" if _flow_prediction(scheduler) else ""))


def _flow_prediction(scheduler) -> bool:
    """Whether the model predicts flow (so an Euler flow-matching scheduler can replace its own)."""
    cfg = scheduler.config
    return bool(getattr(cfg, "use_flow_sigmas", False) or getattr(cfg, "prediction_type", "") == "flow_prediction")


class Session:
    """Hooks attached to a loaded pipeline for the lifetime of a `with` block; runs reset state per call."""

    def __init__(self, loaded, controller, micro_batch: int = 0):
        self.loaded, self.controller, self.micro_batch = loaded, controller, micro_batch
        self._scheduler = None

    def __enter__(self) -> "Session":
        pipe = self.loaded.pipe
        if self.controller.schedule is not None:
            check_adjustable(pipe.scheduler)
        self._scheduler = pipe.scheduler
        bb = self.loaded.backbone
        apply_ertacache(pipe.transformer, bb.block_lists, self.controller, self.controller.residual,
                        self.micro_batch, bb.unbatched_args, getattr(bb, "default_branch", "default"),
                        compile=getattr(self.loaded, "compile", False))
        try:
            if self.controller.schedule is not None:
                pipe.scheduler = make_planned_scheduler(pipe.scheduler, self.controller.schedule)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.loaded.pipe.scheduler = self._scheduler
        remove_ertacache(self.loaded.pipe.transformer)

    def fresh(self) -> None:
        """Forget every branch's cache and counters before a pipeline call."""
        reset_ertacache(self.loaded.pipe.transformer)
        self.controller.begin()

    def run_batch(self, recipe, prompts: list[str], seeds: list[int], on_step=None):
        """One lockstep pipeline call over the whole batch (`on_step()` after each denoising step)."""
        from ..backbones.runner import run_batch

        self.fresh()
        return run_batch(self.loaded, recipe, prompts, seeds, on_step=on_step)
