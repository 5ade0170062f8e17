"""A controller's hooks attached to a pipeline (and its planned scheduler swapped in) for a `with` block."""

from __future__ import annotations

from dataclasses import replace

from .config import ErtaCacheConfig
from .diffusers_compat import unwrap, user_compiled
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


def backbone_config(backbone, controller, micro_batch: int = 0, compile: bool = False,
                  compiled=None, stream_prefix: str = "") -> ErtaCacheConfig:
    """The engine config for a registered backbone's transformer driven by `controller`."""
    return ErtaCacheConfig(controller, tuple(backbone.block_lists), controller.residual, micro_batch,
                           tuple(backbone.unbatched_args), backbone.default_branch, stream_prefix, compile, compiled)


class Session:
    """Hooks on the pipeline's denoiser(s) driven by `controller` while the block is open; the scheduler is restored.

    `backbone` is the registered Backbone of the pipeline (block lists, unbatched args, default branch).
    `denoisers` lists (pipeline attribute, stream prefix) of every transformer to hook, sharing the controller and
    one `CallClock`: `(("transformer", "high/"), ("transformer_2", "low/"))` makes Wan2.2's experts the streams
    `high/cond`, `low/cond`, ... The hooks go on each transformer itself even when the pipeline holds a
    `torch.compile` wrapper (before or after this session starts); either way, and with `compile=True`, each
    block class's own forward runs compiled.
    """

    def __init__(self, pipe, backbone, controller, micro_batch: int = 0, compile: bool = False,
                 denoisers: tuple[tuple[str, str], ...] | None = None):
        self.pipe, self.backbone, self.controller = pipe, backbone, controller
        if denoisers is None:  # the backbone's: ("transformer", "") unless discovery found Wan2.2's two experts
            denoisers = tuple(zip(getattr(backbone, "transformers", ("transformer",)),
                                  getattr(backbone, "stream_prefixes", ("",))))
        self.denoisers = tuple(denoisers)
        attr, prefix = self.denoisers[0]
        self.config = replace(backbone_config(backbone, controller, micro_batch, compile, self._compiled(attr), prefix),
                              scheduler=self._live_scheduler)  # its step index tells where a call starts
        self.configs = [self.config] + [replace(self.config, stream_prefix=p, compiled=self._compiled(a))
                                        for a, p in self.denoisers[1:]]  # replace keeps the controller and clock
        self.transformer = None   # the first denoiser, unwrapped: where the API finds this session
        self.hooked: list = []
        self._scheduler = None

    def _live_scheduler(self):
        """The pipeline's scheduler at the time of a transformer call (the planned one while this session runs)."""
        return getattr(self.pipe, "scheduler", None)

    def _compiled(self, attr: str):
        """Whether the pipeline's `attr` is, at the time of a call, compiled by the user (wrapper or `.compile()`)."""
        return lambda: user_compiled(getattr(self.pipe, attr))

    def __enter__(self) -> "Session":
        pipe = self.pipe
        if self.controller.schedule is not None:
            check_adjustable(pipe.scheduler)
        self._scheduler = pipe.scheduler
        try:
            for (attr, _), config in zip(self.denoisers, self.configs):
                module = unwrap(getattr(pipe, attr))
                self.hooked.append(module)
                remove_positions(module)  # outermost first: a hook left inside would call a removed one
                apply_positions(module, apply_ertacache(module, config))  # unnamed calls: a stream per position
            self.transformer = self.hooked[0]
            if self.controller.schedule is not None:
                pipe.scheduler = make_planned_scheduler(pipe.scheduler, self.controller.schedule)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.pipe.scheduler = self._scheduler
        for module in self.hooked:
            remove_positions(module)
            remove_ertacache(module)
        self.hooked = []

    def fresh(self) -> None:
        """Forget every branch's cache and counters before a pipeline call."""
        for module in self.hooked:
            reset_ertacache(module)
        self.controller.begin()
