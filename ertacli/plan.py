"""The plan artifact: `plan.json` (+ `rectify.safetensors` for per-channel / per-element a, b), load and checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError

PLAN_FILE = "plan.json"
RECT_FILE = "rectify.safetensors"
FORMAT = 1


def recipe_key(recipe) -> str:
    """Digest of what a plan depends on: the model, the sampling settings and the residual space."""
    from .recipe import RUNTIME_MODEL_FIELDS

    model = {k: v for k, v in recipe.model.model_dump().items() if k not in RUNTIME_MODEL_FIELDS}
    data = {"model": model, "sampling": recipe.sampling.model_dump(), "residual": recipe.cache.residual}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prompts_digest(prompts: list[str], seeds: list[int]) -> str:
    """Digest of a calibration or eval set (prompts x seeds, in order)."""
    return hashlib.sha256(json.dumps([prompts, seeds]).encode()).hexdigest()[:16]


def model_id(recipe) -> str:
    """Human-readable model identity recorded in plans."""
    return f"{recipe.model.pipeline}:{recipe.model.path or recipe.model.source}"


@dataclass
class Plan:
    """A cached-step policy, and after `fit` its timestep adjustment and rectification."""

    recipe: str
    recipe_key: str
    model_id: str
    steps: int
    scheduler: dict
    residual: str
    base_sigmas: list[float]
    branches: list[str]
    cached_steps: dict[str, list[int]]
    sample_shape: dict[str, list[int]]
    calibration: dict
    lam: float | None = None
    method: str = "search"
    predictor: dict = field(default_factory=lambda: {"kind": "reuse", "c": 0.0})
    search_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    placement: dict | None = None
    fit: dict | None = None
    adjusted_sigmas: list[float] | None = None
    rectify: dict | None = None
    tool_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: int = FORMAT

    @property
    def nfe(self) -> int:
        """Counted NFE = sum over branches of (T - |S_branch|)."""
        return sum(self.steps - len(self.cached_steps.get(b, [])) for b in self.branches)

    @property
    def n_cached(self) -> int:
        return sum(len(self.cached_steps.get(b, [])) for b in self.branches)

    @property
    def predicted_speedup(self) -> float:
        """T / (T - |S|), over all branches."""
        return self.steps * len(self.branches) / self.nfe

    def cached_sets(self) -> dict[str, set[int]]:
        return {b: set(self.cached_steps.get(b, [])) for b in self.branches}

    def save(self, folder: Path, tensors: dict | None = None) -> Path:
        """Write plan.json (and rectify.safetensors when given tensors) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLAN_FILE).write_text(json.dumps(asdict(self), indent=1, sort_keys=False) + "\n")
        if tensors:
            from safetensors.torch import save_file

            save_file({k: t.contiguous() for k, t in tensors.items()}, str(folder / RECT_FILE))
        return folder


def find_plan_dir(path: str | Path) -> Path:
    """A plan folder, or a run directory holding exactly one plan."""
    p = Path(path)
    if (p / PLAN_FILE).is_file():
        return p
    if not p.exists():
        raise UserError(f"plan not found: {p} (give a plan folder or a search/fit run directory)")
    found = sorted(q.parent for q in p.rglob(PLAN_FILE))
    if len(found) != 1:
        names = ", ".join(str(q.relative_to(p)) for q in found) or "none"
        raise UserError(f"{p} holds {len(found)} plans ({names}): pass one plan folder with --plan")
    return found[0]


def load_plan(path: str | Path) -> tuple[Plan, Path]:
    """Read a plan folder; malformed files give a one-line error."""
    folder = find_plan_dir(path)
    try:
        data = json.loads((folder / PLAN_FILE).read_text())
        data["cached_steps"] = {b: [int(k) for k in s] for b, s in data["cached_steps"].items()}
        plan = Plan(**data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"{folder / PLAN_FILE}: not a valid ertacache plan ({exc}); re-run `ertacache search`")
    if plan.format != FORMAT:
        raise UserError(f"{folder / PLAN_FILE}: plan format {plan.format}, this tool reads {FORMAT}; re-run search")
    return plan, folder


def check_plan(plan: Plan, recipe, folder: Path) -> None:
    """Refuse a plan made for another recipe, model, step count or sampling settings."""
    redo = f"re-run `ertacache search --model {recipe.name}` (then `fit`) for this recipe"
    if plan.steps != recipe.sampling.steps:
        raise UserError(f"plan {folder} has {plan.steps} steps, this run uses {recipe.sampling.steps}: {redo}")
    if plan.model_id != model_id(recipe):
        raise UserError(f"plan {folder} is for model {plan.model_id}, this run uses {model_id(recipe)}: {redo}")
    if plan.recipe_key != recipe_key(recipe):
        raise UserError(f"plan {folder} was made with other model/sampling settings (recipe {plan.recipe}, "
                        f"key {plan.recipe_key} != {recipe_key(recipe)}; size, frames, guidance or dtype differ): {redo}")
    for b, steps in plan.cached_steps.items():
        bad = [k for k in steps if k <= 0 or k >= plan.steps - 1]
        if bad:
            raise UserError(f"plan {folder}: branch {b} caches steps {bad}; steps 0 and T-1 are always computed")


def check_sample_shape(plan: Plan, branch: str, shape: list[int], folder: Path) -> None:
    """Refuse a plan whose per-sample transformer output shape differs from this run's."""
    want = plan.sample_shape.get(branch)
    if want is not None and list(want) != list(shape):
        raise UserError(f"plan {folder} was fitted on latent shape {want}, this run has {list(shape)}: "
                        f"re-run `ertacache search` and `fit` at this size")


def coeffs_from(plan: Plan, tensors: dict | None = None) -> dict[str, dict[int, tuple]]:
    """Rectification coefficients per branch and step as float64 tensors (scalars from JSON, others from tensors)."""
    import torch

    if not plan.rectify or not plan.rectify.get("enabled"):
        return {}
    if plan.rectify["granularity"] == "scalar":
        return {b: {int(k): (torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64))
                    for k, (p, q) in d.items()} for b, d in plan.rectify["scalar"].items()}
    out: dict = {}
    for key, t in (tensors or {}).items():
        b, k, which = key.rsplit(".", 2)
        out.setdefault(b, {}).setdefault(int(k), [None, None])[0 if which == "a" else 1] = t
    return {b: {k: tuple(v) for k, v in d.items()} for b, d in out.items()}


def plan_coeffs(plan: Plan, folder: Path) -> dict[str, dict[int, tuple]]:
    """Coefficients of a saved plan, reading rectify.safetensors for per-channel / per-element a, b."""
    if not plan.rectify or not plan.rectify.get("enabled") or plan.rectify["granularity"] == "scalar":
        return coeffs_from(plan)
    from safetensors.torch import load_file

    f = folder / RECT_FILE
    if not f.is_file():
        raise UserError(f"plan {folder}: {RECT_FILE} is missing; re-run `ertacache fit`")
    return coeffs_from(plan, load_file(str(f)))


def plan_summary(plan: Plan) -> dict[str, Any]:
    """One table row describing a plan."""
    return {"lambda": plan.lam, "method": plan.method, "cached_steps": plan.n_cached, "nfe": plan.nfe,
            "predicted_speedup": round(plan.predicted_speedup, 4),
            "per_branch": " ".join(f"{b}={len(plan.cached_steps.get(b, []))}" for b in plan.branches),
            "cached": "; ".join(f"{b}:{','.join(map(str, plan.cached_steps.get(b, [])))}" for b in plan.branches)}
