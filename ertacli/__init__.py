"""ertacache: calibrated feature caching (ERTACache) for diffusion transformers.

The public API, imported lazily (`import ertacli` loads no torch until a function needs it):

    plan = ertacli.load_plan(path)              # a plan folder written by `ertacache search` / `fit`
    ertacli.enable_cache(pipe, plan)            # on your own diffusers pipeline; ertacli.disable_cache(pipe)
    with ertacli.cached(pipe, plan): ...        # the same for one block
    ertacli.last_call_stats(pipe)               # NFE per branch of the last call
    plan = ertacli.calibrate(pipe, prompts, lam=0.1, num_inference_steps=28, ...)   # profile -> search -> fit

Any diffusers DiT pipeline is described from the loaded object (`ertacli.discover(pipe)`); the registry is for
overrides: `ertacli.register_backbone(ertacli.Backbone(...))`, and `ertacli.register_block(BlockClass,
hidden_index=0, encoder_index=None)` for a block class whose forward's return value discovery cannot read.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Plan": "ertacli.plan", "load_plan": "ertacli.plan",
    "PlanMismatch": "ertacli.errors", "UserError": "ertacli.errors",
    "enable_cache": "ertacli.api", "disable_cache": "ertacli.api", "cached": "ertacli.api",
    "last_call_stats": "ertacli.api", "calibrate": "ertacli.api", "minilm_encoder": "ertacli.api",
    "Backbone": "ertacli.backbones", "register_backbone": "ertacli.backbones",
    "register_block": "ertacli.backbones.discover", "discover": "ertacli.backbones.discover",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ertacli' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
