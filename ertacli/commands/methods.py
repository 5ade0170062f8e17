"""Ways to run a pipeline that generate/eval treat alike: our engine with a plan (or uncached), or a peer cache."""

from __future__ import annotations

from ..plan import check_plan, check_sample_shape, load_plan, plan_coeffs
from .common import Job


def plan_controller(job: Job, plan_path: str | None):
    """(controller, plan, plan folder): an ApplyController for a plan, or a pass-through one for the baseline."""
    from ..engine import ApplyController
    from .fit import apply_controller

    if plan_path is None:
        return ApplyController(job.recipe.sampling.steps, {}, residual=job.recipe.cache.residual), None, None
    plan, folder = load_plan(plan_path)
    check_plan(plan, job.recipe, folder)
    return apply_controller(job, plan, plan_coeffs(plan, folder), plan.adjusted_sigmas), plan, folder


class TransformerClock:
    """Wall time spent inside the transformer's calls (plain torch forward hooks; CUDA synchronised)."""

    def __init__(self, transformer, device: str):
        self.transformer, self.cuda, self.seconds = transformer, str(device).startswith("cuda"), 0.0

    def _now(self) -> float:
        import time

        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self) -> "TransformerClock":
        def pre(*_):
            self._t0 = self._now()

        def post(*_):
            self.seconds += self._now() - self._t0

        self._handles = [self.transformer.register_forward_pre_hook(pre),
                         self.transformer.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def timed_run(job: Job, fn):
    """(BatchResult, seconds inside the transformer) of one call of `fn`."""
    with TransformerClock(job.loaded.pipe.transformer, job.device) as clock:
        out = fn()
    out.transformer_seconds = clock.seconds
    return out


class PlanMethod:
    """The engine applying a plan; with no plan, every call computed (the uncached baseline)."""

    def __init__(self, job: Job, plan_path: str | None = None):
        self.job = job
        self.ctl, self.plan, self.folder = plan_controller(job, plan_path)
        self.info = {"kind": "ertacache" if plan_path else "baseline", "plan": str(self.folder) if self.folder else None,
                     "plan_nfe": self.plan.nfe if self.plan else None}

    def __enter__(self) -> "PlanMethod":
        from ..engine import Session

        self.session = Session(self.job.loaded, self.ctl).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.session.__exit__(*exc)

    def run(self, prompt: str, seed: int):
        """(BatchResult, NFE, cached calls) of one sample."""
        out = timed_run(self.job, lambda: self.session.run_batch(self.job.recipe, [prompt], [seed]))
        if self.plan is not None:
            for b, shape in self.ctl.shapes.items():
                check_sample_shape(self.plan, b, shape, self.folder)
        return out, sum(self.ctl.nfe.values()), sum(self.ctl.n_cached.values())


class PeerMethod:
    """One of diffusers' built-in caches at one setting; NFE counted by `NfeCounter`."""

    def __init__(self, job: Job, name: str, setting, extra: dict | None = None):
        from ..peers import PEERS

        self.job, self.peer, self.setting, self.extra = job, PEERS[name], setting, extra or {}
        self.info = {"kind": "peer", "peer": name, "setting": setting, "plan": None, "plan_nfe": None}

    def __enter__(self) -> "PeerMethod":
        from ..peers import NfeCounter, enabled, last_block

        loaded = self.job.loaded
        config = self.peer.build(self.job.recipe.sampling.steps, self.setting, loaded.pipe, self.extra)
        self._cache = enabled(loaded, config)
        self._cache.__enter__()
        block = last_block(loaded.pipe.transformer, loaded.backbone.block_lists)
        self.counter = NfeCounter(loaded.pipe.transformer, block).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.counter.__exit__(*exc)
        self._cache.__exit__(*exc)

    def run(self, prompt: str, seed: int):
        from ..backbones.runner import run_batch

        self.counter.calls = 0
        out = timed_run(self.job, lambda: run_batch(self.job.loaded, self.job.recipe, [prompt], [seed]))
        return out, self.counter.calls, None
