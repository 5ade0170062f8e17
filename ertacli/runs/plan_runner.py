"""A plan as generate, eval, sweep and overhead run it: through the public API, as a user's own code applies it.

It lives above `ertacli.api` (the library below it, `ertacli.evaluation` included, never imports the API); its
siblings (the uncached baseline, the peers) are in `ertacli.evaluation.runners`.
"""

from __future__ import annotations

from ..evaluation.runners import timed_run


class PlanRunner:
    """A plan applied through the public API (`ertacli.cached`), exactly as a user's own code applies it."""

    def __init__(self, sampler, plan):
        self.sampler, self.plan = sampler, plan
        self.info = {"kind": "ertacache", "plan": str(plan.folder) if plan.folder else None, "plan_nfe": plan.nfe}

    def __enter__(self) -> "PlanRunner":
        from ..api import enable_cache

        enable_cache(self.sampler.pipe, self.plan, backbone=self.sampler.backbone.pipeline,
                     compile=self.sampler.compile)
        return self

    def __exit__(self, *exc) -> None:
        from ..api import disable_cache

        disable_cache(self.sampler.pipe)

    def run(self, prompt: str, seed: int):
        """(BatchResult, NFE, cached calls) of one sample."""
        from ..api import last_call_stats

        out = timed_run(self.sampler, prompt, seed)
        self.last_stats = last_call_stats(self.sampler.pipe)
        self.info.update({k: self.last_stats[k] for k in ("plan_nfe", "steps", "calibrated_steps", "transferred")})
        return out, self.last_stats["nfe"], self.last_stats["cached"]
