"""The uniform cache (docs/method.md "Uniform cache"): the same number of cached calls, evenly spaced."""

from __future__ import annotations

from ..plan import Plan


def uniform_plan(plan: Plan, n_cached: dict[str, int] | None = None) -> Plan:
    """`plan` with each branch's cached steps (|S| per branch, or `n_cached`) evenly spaced and no fit."""
    from ..engine.schedule import uniform_cached_steps

    counts = n_cached or {b: len(plan.cached_steps.get(b, [])) for b in plan.branches}
    cached = {b: uniform_cached_steps(plan.steps, n) for b, n in counts.items()}
    return plan.copy(cached_steps=cached, method="uniform", fit=None, adjusted_sigmas=None, rectify=None,
                     search_errors={}, tensors=None)
