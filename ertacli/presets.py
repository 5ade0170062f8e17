"""Method presets: typed settings for `--method NAME` (and `ertacli.calibrate(method=...)`), applied over the recipe
and under `--set`.

`ertacache` is the paper's method (reuse the last residual; validated adjustment and rectification). The
others are this project's extensions (docs/method.md "Beyond the paper"): extrapolating the cached residual, and moving
the computed steps. A recipe's own `cache:` / `fit:` sections say which one it runs when `--method` is absent.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class Method:
    """One preset: what it is, in one line, and the recipe settings it fixes (None: the recipe's own).

    `predictor`/`order`/`abscissa`/`residual` are the `cache:` section, `optimize_placement` the `fit:` one and
    `auto` says whether `search` runs the configuration search. For `auto`, the cache settings are the threshold
    policy a `--lambda` target is converted to a cached count with (auto's first lambda family, hidden x1).
    """

    summary: str
    predictor: str | None = None
    order: int | None = None
    abscissa: str | None = None
    residual: str | None = None
    optimize_placement: bool | None = None
    auto: bool = False

    SECTIONS = {"predictor": "cache", "order": "cache", "abscissa": "cache", "residual": "cache",
                "optimize_placement": "fit", "auto": "search"}

    def settings(self) -> dict[str, dict]:
        """The fixed settings by recipe section: {"cache": {...}, "fit": {...}, "search": {...}}."""
        out: dict[str, dict] = {"cache": {}, "fit": {}, "search": {}}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECTIONS and value is not None:
                out[self.SECTIONS[f.name]][f.name] = value
        return out

    @property
    def overrides(self) -> tuple[str, ...]:
        """The same settings as `--set` strings (how `ertacache methods` shows them and sub-runs record them)."""
        text = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
        return tuple(f"{section}.{k}={text(v)}" for section, kv in self.settings().items() for k, v in kv.items())

    def apply(self, recipe):
        """`recipe` with this preset's settings in its cache / fit / search sections (each section validated)."""
        update = {}
        for section, kv in self.settings().items():
            current = getattr(recipe, section)
            update[section] = type(current).model_validate({**current.model_dump(), **kv})
        return recipe.model_copy(update=update)


X = dict(predictor="extrapolate", abscissa="sigma")
METHODS: dict[str, Method] = {
    "ertacache": Method("the paper: reuse the last residual, validated timestep adjustment + rectification",
                        predictor="reuse", optimize_placement=False),
    "ertacache-x1": Method("first-order extrapolation of the residual in sigma, validated gain", order=1, **X,
                           optimize_placement=False),
    "ertacache-x2": Method("second-order extrapolation of the residual in sigma, validated gain", order=2, **X,
                           optimize_placement=False),
    "ertacache-x2p": Method("second-order extrapolation + greedy placement of the computed steps", order=2, **X,
                            optimize_placement=True),
    "auto": Method("search the configuration: placement family, predictor, residual space, gain and corrections, "
                   "scored on held-out calibration prompts", order=1, **X, residual="hidden",
                   optimize_placement=False, auto=True),
}


def get_method(name: str) -> Method:
    """The preset called `name`; an unknown name is a one-line error naming the close ones."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown --method {name!r}: choose from {', '.join(METHODS)}{hint}")
    return METHODS[name]


def method_overrides(name: str | None) -> list[str]:
    """The preset's settings as `--set` strings ([] for None), for the command lines runs record."""
    return [] if name is None else list(get_method(name).overrides)


def preset_of(recipe) -> str:
    """The preset a recipe's own cache/fit settings amount to, or 'custom'."""
    for name, m in METHODS.items():
        if m.apply(recipe).model_dump() == recipe.model_dump():
            return name
    return "custom"
