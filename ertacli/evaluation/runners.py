"""Ways to run a pipeline that generate and eval treat alike: the uncached baseline, or a peer's cache (a plan
through the public API: `ertacli.runs.plan_runner.PlanRunner`, above the API).

A runner is a context manager (hooks attached while open) whose `run(prompt, seed)` returns
(BatchResult with `transformer_seconds`, NFE, cached calls) for one sample, and whose `info` describes it.
"""

from __future__ import annotations


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


def timed_run(sampler, prompt: str, seed: int):
    """One sample through the sampler, with the time inside its denoisers (Wan2.2: both experts) on the result."""
    import contextlib

    from .peer_hooks import denoisers_of

    with contextlib.ExitStack() as stack:
        clocks = [stack.enter_context(TransformerClock(m, sampler.device)) for _, m in denoisers_of(sampler.pipe)]
        out = sampler.run([prompt], [seed])
    out.transformer_seconds = sum(c.seconds for c in clocks)
    return out


class ControllerRunner:
    """The engine with a given controller: no cached step for the uncached baseline, or a fixed cached set."""

    def __init__(self, sampler, controller, info: dict):
        self.sampler, self.ctl, self.info = sampler, controller, info

    def __enter__(self) -> "ControllerRunner":
        from ..engine import Session

        s = self.sampler
        self.session = Session(s.pipe, s.backbone, self.ctl, 0, s.compile).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.session.__exit__(*exc)

    def run(self, prompt: str, seed: int):
        self.session.fresh()
        out = timed_run(self.sampler, prompt, seed)
        stats = self.ctl.call_stats()
        return out, sum(stats["nfe"].values()), sum(stats["cached"].values())


def baseline_runner(sampler, residual: str) -> ControllerRunner:
    """Every call computed: the uncached baseline, counted by the same hooks as a plan."""
    from ..engine import ApplyController

    return ControllerRunner(sampler, ApplyController(sampler.steps, {}, residual=residual),
                            {"kind": "baseline", "plan": None, "plan_nfe": None})


class PeerRunner:
    """One peer cache at one setting; NFE counted by `NfeCounter` (calls whose last block ran, every denoiser)."""

    def __init__(self, sampler, name: str, setting, extra: dict | None = None):
        from .peers import PEERS

        self.sampler, self.peer, self.setting, self.extra = sampler, PEERS[name], setting, extra or {}
        self.info = {"kind": "peer", "peer": name, "setting": setting, "plan": None, "plan_nfe": None}

    def __enter__(self) -> "PeerRunner":
        from .peers import NfeCounter, enabled

        s = self.sampler
        config = self.peer.build(s.steps, self.setting, s.pipe, {**self.extra, "block_lists": s.backbone.block_lists})
        self._cache = enabled(s.pipe, config)
        self._cache.__enter__()
        self.counter = NfeCounter.of(s.pipe, s.backbone.block_lists).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.counter.__exit__(*exc)
        self._cache.__exit__(*exc)

    def run(self, prompt: str, seed: int):
        self.counter.reset()
        out = timed_run(self.sampler, prompt, seed)
        return out, self.counter.calls, None
