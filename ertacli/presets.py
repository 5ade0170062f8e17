"""Method presets: named recipe overrides for `--method NAME`, applied over the recipe and under `--set`.

`ertacache` is the paper's method (reuse the last residual; validated adjustment and rectification). The
others are this project's extensions (docs/method.md "Beyond the paper"): extrapolating the cached residual, and moving
the computed steps. A recipe's own `cache:` / `fit:` sections say which one it runs when `--method` is absent.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Method:
    """One preset: what it is, in one line, and the `--set` overrides that make it."""

    summary: str
    overrides: tuple[str, ...]


PLAIN = ("fit.optimize_placement=false", "search.auto=false")
METHODS: dict[str, Method] = {
    "ertacache": Method("the paper: reuse the last residual, validated timestep adjustment + rectification",
                        ("cache.predictor=reuse", *PLAIN)),
    "ertacache-x1": Method("first-order extrapolation of the residual in sigma, validated gain",
                           ("cache.predictor=extrapolate", "cache.order=1", "cache.abscissa=sigma", *PLAIN)),
    "ertacache-x2": Method("second-order extrapolation of the residual in sigma, validated gain",
                           ("cache.predictor=extrapolate", "cache.order=2", "cache.abscissa=sigma", *PLAIN)),
    "ertacache-x2p": Method("second-order extrapolation + greedy placement of the computed steps",
                            ("cache.predictor=extrapolate", "cache.order=2", "cache.abscissa=sigma",
                             "fit.optimize_placement=true", "search.auto=false")),
    "auto": Method("search the configuration: placement family, predictor, residual space, gain and corrections, "
                   "scored on held-out calibration prompts", ("search.auto=true", "cache.residual=hidden",
                                                              "fit.optimize_placement=false")),
}


def method_overrides(name: str | None) -> list[str]:
    """The preset's overrides ([] for None); an unknown name is a one-line error naming the close ones."""
    if name is None:
        return []
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown --method {name!r}: choose from {', '.join(METHODS)}{hint}")
    return list(METHODS[name].overrides)


def preset_of(recipe) -> str:
    """The preset a recipe's own cache/fit settings amount to, or 'custom'."""
    from .recipe import with_overrides

    for name, m in METHODS.items():
        if with_overrides(recipe, list(m.overrides)).model_dump() == recipe.model_dump():
            return name
    return "custom"
