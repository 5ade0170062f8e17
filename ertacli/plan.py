"""The plan artifact: `plan.json` (+ `rectify.safetensors` for per-channel / per-element a, b), load and checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import PlanMismatch, UserError, require_same

PLAN_FILE = "plan.json"
RECT_FILE = "rectify.safetensors"
FORMAT = 1
TRANSIENT = ("tensors", "folder")  # held in memory, never written into plan.json


def recipe_key(recipe, identity: dict | None = None) -> str:
    """Digest of what a run depends on: the model, the sampling settings and the residual space.

    With the model's `identity` (ertacli.identity: config and weights digest) the model is known by content,
    not by its path string: runs are reused (baselines, profiles) only for the same weights.
    """
    from .recipe import RUNTIME_MODEL_FIELDS

    model = {k: v for k, v in recipe.model.model_dump().items() if k not in RUNTIME_MODEL_FIELDS}
    if identity and identity.get("weights"):
        model.pop("path", None)
        model["content"] = {"config": identity.get("config_digest"), "weights": identity["weights"]}
    else:
        model["path"] = _model_path(recipe)
    data = {"model": model, "sampling": recipe.sampling.model_dump(), "residual": recipe.cache.residual}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


IDENTITY_FIELDS = ("recipe", "recipe_key", "model_id", "settings", "model", "made_by")


def identity_fields(identity: dict) -> dict:
    """The Plan fields an identity (`Job.identity()`, `api.pipeline_identity`) gives: recipe, keys, model
    identity by content, the settings in the user's terms and what made the plan."""
    return {k: identity.get(k) for k in IDENTITY_FIELDS}


def prompts_digest(prompts: list[str], seeds: list[int]) -> str:
    """Digest of a calibration or eval set (prompts x seeds, in order)."""
    return hashlib.sha256(json.dumps([prompts, seeds]).encode()).hexdigest()[:16]


def _model_path(recipe):
    """model.path as the loader reads it (a ./ or ../ path resolved from the recipe's folder), so a run's recorded
    recipe (paths made absolute) names the same model as the recipe it was made from."""
    return recipe.model_dir() if hasattr(recipe, "model_dir") else recipe.model.path


def model_id(recipe) -> str:
    """Human-readable model identity recorded in plans."""
    return f"{recipe.model.pipeline}:{_model_path(recipe) or recipe.model.source}"


@dataclass(frozen=True)
class Rectification:
    """A plan's `rectify` entry, typed: eps ~ a v~ + b per cached step (scalars here, others in `Plan.tensors`)."""

    enabled: bool = False
    form: str = "linear"
    granularity: str = "scalar"
    scalar: dict = field(default_factory=dict)  # branch -> step -> [a, b]

    @classmethod
    def of(cls, data: dict | None) -> "Rectification":
        return cls(**(data or {}))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """A cached-step policy, and after `fit` its timestep adjustment and rectification.

    `cached_steps[branch]` are the steps whose transformer call is replaced by the predicted residual;
    `adjusted_sigmas` (after fit) are the sigmas sampled with; `rectify` holds the error-correction coefficients
    (scalars here, per-channel or per-element ones in `tensors`, saved as rectify.safetensors).
    """

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
    auto: dict | None = None  # `--method auto`: the settings that won, the runner-up and the margin
    adjusted_sigmas: list[float] | None = None
    rectify: dict | None = None
    model_class: str | None = None  # the transformer's class (plans made before this field: None, not checked)
    streams: dict | None = None  # per branch [first, last] step it runs (Wan2.2 experts); None: every step
    settings: dict | None = None  # what it was made for in the user's terms (plan_settings.RunSettings.to_json)
    model: dict | None = None  # the model by content: transformer class, config, weights digest (identity.py)
    made_by: str | None = None  # the command or call that made it (`ertacache search`, `ertacli.calibrate`)
    transferred: dict | None = None  # from which step count and by what rule (ertacli.transfer); None: as calibrated
    tool_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: int = FORMAT
    tensors: dict | None = field(default=None, repr=False, compare=False)  # per-channel / per-element a, b
    folder: Path | None = field(default=None, repr=False, compare=False)  # where it was loaded from

    @property
    def nfe(self) -> int:
        """Counted NFE = sum over branches of (calls of the branch - |S_branch|); a branch's calls are T unless
        `streams` gives its step range (a Wan2.2 expert)."""
        return sum(self.calls(b) - len(self.cached_steps.get(b, [])) for b in self.branches)

    def calls(self, branch: str) -> int:
        """Transformer calls of a branch per sample when nothing is cached."""
        first, last = (self.streams or {}).get(branch, (0, self.steps - 1))
        return int(last) - int(first) + 1

    @property
    def n_cached(self) -> int:
        """Cached transformer calls per sample, summed over branches."""
        return sum(len(self.cached_steps.get(b, [])) for b in self.branches)

    @property
    def predicted_speedup(self) -> float:
        """T / (T - |S|), over all branches."""
        return sum(self.calls(b) for b in self.branches) / self.nfe

    @property
    def where(self) -> str:
        """How error messages name this plan: its folder, else its recipe."""
        return f"plan {self.folder}" if self.folder is not None else f"plan (recipe {self.recipe})"

    @property
    def prediction(self):
        """The typed predictor (`engine.predict.Predictor`) of the `predictor` entry, on this plan's sigmas."""
        from .engine.predict import Predictor

        return Predictor.from_plan(self.predictor, self.base_sigmas)

    @property
    def rectification(self) -> Rectification:
        """The typed `rectify` entry (disabled when the plan has none)."""
        return Rectification.of(self.rectify)

    def cached_sets(self) -> dict[str, set[int]]:
        """Cached steps per branch as sets."""
        return {b: set(self.cached_steps.get(b, [])) for b in self.branches}

    def copy(self, **changes) -> "Plan":
        """A copy with some fields replaced."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Plan(**json.loads(json.dumps({k: v for k, v in data.items() if k not in TRANSIENT}, default=str)),
                    tensors=data["tensors"], folder=data["folder"])

    def to_json(self) -> dict:
        """The plan.json content."""
        return {k: v for k, v in asdict(self).items() if k not in TRANSIENT}

    def save(self, folder: str | Path, tensors: dict | None = None) -> Path:
        """Write plan.json (and rectify.safetensors for per-channel / per-element coefficients) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLAN_FILE).write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")
        tensors = tensors if tensors is not None else self.tensors
        if tensors:
            from safetensors.torch import save_file

            save_file({k: t.contiguous() for k, t in tensors.items()}, str(folder / RECT_FILE))
        return folder

    def coeffs(self) -> dict[str, dict[int, tuple]]:
        """Rectification coefficients per branch and step as float64 tensors."""
        return coeffs_from(self, self.tensors)


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


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan folder (or a run directory holding one plan); a bad plan is one line naming the field."""
    from .plan_check import read_bounded, validate_plan_data

    folder = find_plan_dir(path)
    where = str(folder / PLAN_FILE)
    try:
        data = json.loads(read_bounded(folder / PLAN_FILE))
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{where}: not a valid ertacache plan ({str(exc)[:200]}); re-run `ertacache search`")
    if isinstance(data, dict) and data.get("format", FORMAT) != FORMAT:
        raise UserError(f"{where}: plan format {str(data.get('format'))[:40]}, this tool reads {FORMAT}; re-run search")
    validate_plan_data(data, where)
    try:
        plan = Plan(**data)
    except TypeError as exc:
        raise UserError(f"{where}: not a valid ertacache plan ({str(exc)[:200]}); re-run `ertacache search`")
    plan.folder = folder
    plan.tensors = _read_tensors(plan, folder)
    return plan


def validate(plan: Plan, branches: tuple[str, ...] | None = None) -> Plan:
    """Run the plan validator on a Plan built in Python (what `load_plan` runs on a file); `branches`: those of
    the backbone it is used with (default: the pipeline its model_id names)."""
    from .plan_check import validate_plan_data, validate_tensors

    validate_plan_data(json.loads(json.dumps(plan.to_json(), default=str)), plan.where, branches)
    if plan.tensors:
        from .plan_check import validate_coverage

        validate_tensors(plan.tensors, plan.branches, plan.where)
        validate_coverage(plan.tensors, plan.cached_steps, (plan.rectify or {}).get("granularity"), plan.where)
    return plan


def _read_tensors(plan: Plan, folder: Path) -> dict | None:
    """rectify.safetensors for per-channel / per-element coefficients (None for scalar or no rectification)."""
    from .plan_check import MAX_TENSOR_BYTES, read_bounded, validate_coverage, validate_tensors

    if not plan.rectify or not plan.rectify.get("enabled") or plan.rectify.get("granularity") == "scalar":
        return None
    from safetensors.torch import load

    f = folder / RECT_FILE
    if not f.is_file():
        raise UserError(f"plan {folder}: {RECT_FILE} is missing; re-run `ertacache fit`")
    try:
        tensors = load(read_bounded(f, MAX_TENSOR_BYTES))
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise UserError(f"{f}: not a readable tensor file ({str(exc)[:200]}); re-run `ertacache fit`")
    validate_tensors(tensors, plan.branches, str(f))
    validate_coverage(tensors, plan.cached_steps, plan.rectify.get("granularity"), str(f))
    return tensors


def check_plan(plan: Plan, run) -> None:
    """Refuse a plan made for another model or other settings than `run` (a plan_settings.RunSettings: the
    one check the API's per-call check runs too); another step count is not refused where the plan records its
    sigmas (the call runs it transferred: ertacli.transfer); a plan made before plans recorded their settings is checked
    by its step count and settings digest."""
    from .plan_settings import check_settings

    if plan.settings is None:
        redo = "the plan predates recorded settings (an older ertacache); re-run `ertacache search` (then `fit`)"
        require_same(plan.where, "num_inference_steps", plan.steps, run.steps, redo, PlanMismatch)
        require_same(plan.where, "model/sampling settings key", plan.recipe_key, run.legacy_key, redo, PlanMismatch)
    else:
        if plan.base_sigmas and run.steps is not None and run.steps != plan.settings.get("steps"):
            from dataclasses import replace

            run = replace(run, steps=None)  # another step count: the engine runs the plan transferred (transfer.py)
        check_settings(plan.where, plan.settings, plan.model, run)
    for b, steps in plan.cached_steps.items():
        first, last = (plan.streams or {}).get(b, (0, plan.steps - 1))
        bad = [k for k in steps if k <= int(first) or k > int(last)]
        if bad:
            raise UserError(f"{plan.where}: branch {b} caches steps {bad}; it can cache steps {int(first) + 1}.."
                            f"{int(last)} (its first step {int(first)} is always computed)")


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


def plan_summary(plan: Plan) -> dict[str, Any]:
    """One table row describing a plan."""
    return {"lambda": plan.lam, "method": plan.method, "cached_steps": plan.n_cached, "nfe": plan.nfe,
            "predicted_speedup": round(plan.predicted_speedup, 4),
            "per_branch": " ".join(f"{b}={len(plan.cached_steps.get(b, []))}" for b in plan.branches),
            "cached": "; ".join(f"{b}:{','.join(map(str, plan.cached_steps.get(b, [])))}" for b in plan.branches)}
