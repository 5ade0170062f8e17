"""The one plan validator: every loader (the CLI's --plan, `ertacli.load_plan`, `enable_cache`) runs it.

A plan is refused with one line naming the file, the field and what to re-run when a type, range, finiteness,
ordering (sigmas never increase), branch name or step list is wrong; plan files are read with a size bound.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_PLAN_BYTES = 32 * 1024 * 1024  # plan.json: a few KB for a real plan; bounded so a device cannot fill memory
MAX_TENSOR_BYTES = 16 * 1024 ** 3  # rectify.safetensors (per-element coefficients of a large video model)
MAX_STEPS = 10_000
from .choices import ABSCISSAE, FORMS, GRANULARITIES, KINDS, RESIDUALS  # noqa: E402 (the one table)
REQUIRED = ("recipe", "recipe_key", "model_id", "steps", "scheduler", "residual", "base_sigmas", "branches",
            "cached_steps", "sample_shape", "calibration")
FIT_FIELDS = ("adjusted_sigmas", "rectify", "predictor.c", "fit")


class PlanInvalid(UserError):
    """A plan file whose content cannot be run as it is."""


def read_bounded(path: Path, limit: int = MAX_PLAN_BYTES) -> bytes:
    """A regular file's bytes, refusing devices, FIFOs and files above `limit` (one line naming the file)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PlanInvalid(f"{path}: cannot be read ({exc.strerror}); give a plan folder written by `ertacache search`")
    if not stat.S_ISREG(st.st_mode):
        raise PlanInvalid(f"{path}: not a regular file; give a plan folder written by `ertacache search`")
    if st.st_size > limit:
        raise PlanInvalid(f"{path}: {st.st_size} bytes, above the {limit}-byte limit for a plan file; "
                          f"re-run `ertacache search`")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise PlanInvalid(f"{path}: cannot be read ({exc.strerror}); check its permissions")
    if len(data) > limit:
        raise PlanInvalid(f"{path}: above the {limit}-byte limit for a plan file; re-run `ertacache search`")
    return data


class _Check:
    """Field checks that raise one PlanInvalid line naming `where`, the field and the command to re-run."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, name: str, problem: str) -> None:
        redo = "ertacache fit" if name.startswith(FIT_FIELDS) else "ertacache search"
        raise PlanInvalid(f"{self.where}: field {name} {problem}; re-run `{redo}` to write a valid plan")

    def integer(self, name: str, v: Any, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, f"must be an integer, got {_short(v)}")
        if not lo <= v <= hi:
            self.fail(name, f"= {v} is outside [{lo}, {hi}]")
        return v

    def number(self, name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(name, f"must be a number, got {_short(v)}")
        if not math.isfinite(v):
            self.fail(name, f"is not finite ({v})")
        return float(v)

    def text(self, name: str, v: Any) -> str:
        if not isinstance(v, str) or not v:
            self.fail(name, f"must be a non-empty string, got {_short(v)}")
        return v

    def choice(self, name: str, v: Any, options: tuple) -> None:
        if v not in options:
            self.fail(name, f"= {_short(v)} is not one of {', '.join(options)}")

    def mapping(self, name: str, v: Any) -> dict:
        if not isinstance(v, dict):
            self.fail(name, f"must be an object, got {_short(v)}")
        return v

    def sigmas(self, name: str, v: Any, n: int | None = None) -> list[float]:
        if not isinstance(v, list):
            self.fail(name, f"must be a list of numbers, got {_short(v)}")
        vals = [self.number(f"{name}[{i}]", s) for i, s in enumerate(v)]
        if n is not None and len(vals) != n:
            self.fail(name, f"has {len(vals)} values, expected {n}")
        for i in range(1, len(vals)):
            if vals[i] > vals[i - 1]:
                self.fail(name, f"increases at index {i} ({vals[i - 1]} -> {vals[i]}); sigmas never increase")
        if vals and vals[-1] < 0:
            self.fail(name, f"ends below 0 ({vals[-1]})")
        return vals


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def known_branches(model_id: str, where: str) -> tuple[str, ...] | None:
    """The branches of the backbone a plan's model_id names (`FluxPipeline:...`); None for an adapter."""
    from .backbones import ADAPTER, get_backbone

    pipeline = model_id.split(":", 1)[0]
    if pipeline == ADAPTER:
        return ("cond", "uncond")
    try:
        own = tuple(get_backbone(pipeline).branches)
        from .backbones.discover import EXPERT_PREFIXES

        return own + tuple(p + b for p in EXPERT_PREFIXES for b in own)  # Wan2.2: both experts' streams
    except UserError:
        from .backbones.discover import is_diffusers_pipeline

        if is_diffusers_pipeline(pipeline):
            return None  # described by discovery: its branches are checked against the call, not a registry
        raise PlanInvalid(f"{where}: field model_id {model_id!r} names no registered pipeline; re-run "
                          f"`ertacache search` with a registered backbone") from None


def validate_plan_data(data: Any, where: str, known: tuple[str, ...] | None = None) -> None:
    """Refuse a plan.json content that cannot be run as it is (raises PlanInvalid, one line).

    known: the branches of the backbone the plan is used with (default: those of the pipeline its model_id names).
    """
    c = _Check(where)
    if not isinstance(data, dict):
        c.fail("(top level)", f"must be a JSON object, got {type(data).__name__}")
    for name in REQUIRED:
        if name not in data:
            c.fail(name, "is missing")
    c.text("recipe", data["recipe"])
    c.text("recipe_key", data["recipe_key"])
    model = c.text("model_id", data["model_id"])
    steps = c.integer("steps", data["steps"], 2, MAX_STEPS)
    c.mapping("scheduler", data["scheduler"])
    c.choice("residual", data["residual"], RESIDUALS)
    base = c.sigmas("base_sigmas", data["base_sigmas"])
    if base and len(base) not in (steps, steps + 1):
        c.fail("base_sigmas", f"has {len(base)} values for {steps} steps")
    branches = _check_branches(c, data["branches"], known if known is not None else known_branches(model, where))
    _check_cached(c, data["cached_steps"], branches, steps, data.get("streams"))
    shapes = c.mapping("sample_shape", data["sample_shape"])
    for b, shape in shapes.items():
        if not isinstance(shape, list) or not shape:
            c.fail(f"sample_shape.{b}", f"must be a list of sizes, got {_short(shape)}")
        for i, n in enumerate(shape):
            c.integer(f"sample_shape.{b}[{i}]", n, 1, 1 << 31)
    c.mapping("calibration", data["calibration"])
    if data.get("lam") is not None and c.number("lam", data["lam"]) < 0:
        c.fail("lam", "is negative")
    _check_predictor(c, data.get("predictor", {}), branches, steps)
    if data.get("adjusted_sigmas") is not None:
        c.sigmas("adjusted_sigmas", data["adjusted_sigmas"], len(base) if base else None)
    if data.get("rectify") is not None:
        _check_rectify(c, data["rectify"], branches, steps)
    for name in ("fit", "placement"):
        if data.get(name) is not None:
            c.mapping(name, data[name])
    if data.get("settings") is not None:
        _check_settings(c, data["settings"], steps)
    if data.get("model") is not None:
        _check_model(c, data["model"])
    if data.get("made_by") is not None:
        c.text("made_by", data["made_by"])


def _check_settings(c: _Check, settings: Any, steps: int) -> None:
    """`settings`: what the plan was made for in the user's terms (plan_settings.RunSettings); null = unknown."""
    from .plan_settings import GUIDANCE_USES

    c.mapping("settings", settings)
    for name in ("steps", "height", "width", "frames"):
        if settings.get(name) is not None:
            c.integer(f"settings.{name}", settings[name], 1, 1 << 31)
    if settings.get("steps") is not None and settings["steps"] != steps:
        c.fail("settings.steps", f"= {settings['steps']} differs from steps = {steps}")
    if settings.get("guidance_scale") is not None:
        c.number("settings.guidance_scale", settings["guidance_scale"])
    if settings.get("guidance") is not None:
        c.choice("settings.guidance", settings["guidance"], GUIDANCE_USES)
    for name in ("pipeline", "dtype"):
        if settings.get(name) is not None:
            c.text(f"settings.{name}", settings[name])
    c.mapping("settings.call", settings.get("call", {}))


def _check_model(c: _Check, model: Any) -> None:
    """`model`: the transformer's class, config and weights digest (ertacli.identity)."""
    c.mapping("model", model)
    c.text("model.transformer", model.get("transformer"))
    c.mapping("model.config", model.get("config"))
    weights = model.get("weights")
    if weights is not None and (not isinstance(weights, str) or len(weights) != 64
                                or any(ch not in "0123456789abcdef" for ch in weights)):
        c.fail("model.weights", f"must be a sha256 hex digest or null, got {_short(weights)}")


def _check_branches(c: _Check, branches: Any, known: tuple[str, ...] | None) -> list[str]:
    if not isinstance(branches, list) or not branches or not all(isinstance(b, str) for b in branches):
        c.fail("branches", f"must be a non-empty list of branch names, got {_short(branches)}")
    if len(set(branches)) != len(branches):
        c.fail("branches", f"names a branch twice ({', '.join(branches)})")
    unknown = [b for b in branches if known is not None and b not in known]
    if unknown:
        c.fail("branches", f"names {', '.join(unknown)}, not a branch of this backbone ({', '.join(known)})")
    return branches


def _check_cached(c: _Check, cached: Any, branches: list[str], steps: int, streams: Any = None) -> None:
    """Each branch's cached steps: step indices after the stream's first call (step 0, or a Wan2.2 expert's first
    step: nothing to reuse yet) up to its last, T-1 included (a plan's choice)."""
    c.mapping("cached_steps", cached)
    ranges = streams if isinstance(streams, dict) else {}
    for b, ks in cached.items():
        if b not in branches:
            c.fail(f"cached_steps.{b}", f"names a branch not in branches ({', '.join(branches)})")
        if not isinstance(ks, list):
            c.fail(f"cached_steps.{b}", f"must be a list of step indices, got {_short(ks)}")
        first, last = _stream_range(ranges.get(b), steps)
        for i, k in enumerate(ks):
            c.integer(f"cached_steps.{b}[{i}]", k, first + 1, last)
        if len(set(ks)) != len(ks):
            dup = sorted({k for k in ks if ks.count(k) > 1})
            c.fail(f"cached_steps.{b}", f"lists step(s) {dup} more than once")


def _stream_range(span: Any, steps: int) -> tuple[int, int]:
    """(first, last) step a branch runs: its `streams` entry when it is two integers in range, else 0..T-1."""
    ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in span)
    return (int(span[0]), int(span[1])) if ok and 0 <= span[0] <= span[1] < steps else (0, steps - 1)


def _check_predictor(c: _Check, pred: Any, branches: list[str], steps: int) -> None:
    c.mapping("predictor", pred)
    c.choice("predictor.kind", pred.get("kind", "reuse"), KINDS)
    if "order" in pred:
        c.integer("predictor.order", pred["order"], 1, 2)
    c.choice("predictor.abscissa", pred.get("abscissa", "sigma"), ABSCISSAE)
    gain = pred.get("c", 0.0)
    if not isinstance(gain, dict):
        c.number("predictor.c", gain)
        return
    for b, per in gain.items():
        if b not in branches:
            c.fail(f"predictor.c.{b}", f"names a branch not in branches ({', '.join(branches)})")
        for k, v in c.mapping(f"predictor.c.{b}", per).items():
            _step_key(c, f"predictor.c.{b}", k, steps)
            c.number(f"predictor.c.{b}.{k}", v)


def _step_key(c: _Check, name: str, k: Any, steps: int) -> None:
    if not isinstance(k, str) or not k.isdigit() or not 0 <= int(k) < steps:
        c.fail(name, f"has key {_short(k)}, not a step index in [0, {steps - 1}]")


def _check_rectify(c: _Check, rect: Any, branches: list[str], steps: int) -> None:
    c.mapping("rectify", rect)
    if not isinstance(rect.get("enabled", False), bool):
        c.fail("rectify.enabled", f"must be true or false, got {_short(rect.get('enabled'))}")
    if not rect.get("enabled"):
        return
    c.choice("rectify.form", rect.get("form"), FORMS)
    c.choice("rectify.granularity", rect.get("granularity"), GRANULARITIES)
    if rect["granularity"] != "scalar":
        return
    for b, per in c.mapping("rectify.scalar", rect.get("scalar")).items():
        if b not in branches:
            c.fail(f"rectify.scalar.{b}", f"names a branch not in branches ({', '.join(branches)})")
        for k, pair in c.mapping(f"rectify.scalar.{b}", per).items():
            _step_key(c, f"rectify.scalar.{b}", k, steps)
            if not isinstance(pair, list) or len(pair) != 2:
                c.fail(f"rectify.scalar.{b}.{k}", f"must be a pair [a, b], got {_short(pair)}")
            for v in pair:
                c.number(f"rectify.scalar.{b}.{k}", v)


def validate_tensors(tensors: dict, branches: list[str], where: str) -> None:
    """rectify.safetensors: keys `<branch>.<step>.a|b` of known branches, every value finite."""
    import torch

    for key, t in tensors.items():
        parts = key.rsplit(".", 2)
        if len(parts) != 3 or parts[0] not in branches or not parts[1].isdigit() or parts[2] not in ("a", "b"):
            raise PlanInvalid(f"{where}: rectify.safetensors key {key!r} is not <branch>.<step>.a|b of this plan; "
                              f"re-run `ertacache fit`")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PlanInvalid(f"{where}: rectify.safetensors {key} holds NaN or infinite values; re-run `ertacache fit`")


def validate_coverage(tensors: dict, cached_steps: dict, granularity: str | None, where: str) -> None:
    """rectify.safetensors against the plan: an `a` and a `b` for exactly the cached steps of each branch (a file
    taken from another plan rectifies other steps), a and b of one shape per branch, 1-D per channel."""
    shapes: dict[str, set] = {}
    for b, steps in cached_steps.items():
        want = {f"{b}.{int(k)}.{ab}" for k in steps for ab in ("a", "b")}
        have = {key for key in tensors if key.rsplit(".", 2)[0] == b}
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            detail = f"missing {', '.join(missing[:4])}" if missing else f"has {', '.join(extra[:4])}"
            raise PlanInvalid(f"{where}: rectify.safetensors does not match the plan's {len(steps)} cached steps of "
                              f"branch {b} ({detail}; taken from another plan?); re-run `ertacache fit`")
        shapes[b] = {tuple(tensors[key].shape) for key in want}
    for b, found in shapes.items():
        if len(found) > 1 or (granularity == "channel" and any(len(s) != 1 for s in found)) or \
                (granularity == "element" and any(len(s) < 1 for s in found)):
            raise PlanInvalid(f"{where}: rectify.safetensors coefficients of branch {b} have shapes "
                              f"{sorted(found)[:3]}, not one {granularity} shape; re-run `ertacache fit`")
