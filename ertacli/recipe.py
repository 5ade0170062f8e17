"""Recipes: the schema, include/override resolution, prompts and digests."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ertacli.choices import ABSCISSAE, FORMS, GRANULARITIES, KINDS, ORDERS, RESIDUALS, TOGGLES
from ertacli.assets import available_recipes, describe_search_path, find_named
from ertacli.errors import UserError
from ertacli.limits import MAX_DEPTH, MAX_OVERRIDE_CHARS, MAX_RECIPE_BYTES, depth, read_text_bounded
from ertacli.prompts import PROMPT_HINT, read_prompt_file  # noqa: F401  (recipe.read_prompt_file: the public name)

PromptKind = Literal["calibration", "eval"]
Toggle = Annotated[Literal[TOGGLES],  # YAML reads a bare on/off as a boolean: take it back
                   BeforeValidator(lambda v: {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v)]
RUNTIME_MODEL_FIELDS = ("cpu_offload", "vae_tiling", "vae_slicing", "attention_backend")
"""ModelCfg fields that change memory and speed, not what the model computes (beyond kernel round-off)."""


def results_dir() -> Path:
    """Directory for run outputs: $ERTACACHE_RESULTS, else results/ in the current folder (read at each call)."""
    env = os.environ.get("ERTACACHE_RESULTS")
    return Path(env).expanduser() if env else Path.cwd() / "results"


class _Strict(BaseModel):
    """Base model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Strict):
    """Which pipeline to build and how."""

    pipeline: str
    source: Literal["tiny", "pretrained"] = "tiny"
    path: Optional[str] = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    cpu_offload: Literal["none", "model", "sequential"] = "none"  # diffusers CPU offload (accelerators only)
    vae_tiling: bool = False  # decode in spatial tiles (large frames; when the VAE supports it)
    vae_slicing: bool = True  # decode one sample of the batch at a time (when the VAE supports it)
    attention_backend: Optional[str] = None  # diffusers attention backend (flash, sage, native, ...); None: default
    seed: int = 0
    tiny: dict[str, Any] = Field(default_factory=dict)
    scheduler: Optional[Literal["flow-euler"]] = None
    text_encoder: Literal["pipeline", "hash", "minilm"] = "pipeline"  # hash/minilm: offline prompt_embeds
    adapter: Optional[str] = None  # pipeline "adapter": "package.module:function" or "path/file.py:function"

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> "ModelCfg":
        """A pretrained source needs a hub id or local directory."""
        if self.source == "pretrained" and not self.path:
            raise ValueError("model.path (hub id or local directory) is required when source is 'pretrained'")
        if (self.pipeline == "adapter") != bool(self.adapter):
            raise ValueError("pipeline 'adapter' and model.adapter ('package.module:function') go together")
        return self


MAX_STEPS = 10_000  # sampling steps; larger is a typo, and a profile grows with T
MAX_SIDE = 16_384  # pixels per side
MAX_FRAMES = 4_096
MAX_SEEDS = 10_000
MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed's range, non-negative
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class SamplingCfg(_Strict):
    """Sampler settings passed to the pipeline call."""

    steps: int = Field(28, ge=2, le=MAX_STEPS)
    height: int = Field(32, ge=1, le=MAX_SIDE)
    width: int = Field(32, ge=1, le=MAX_SIDE)
    frames: Optional[int] = Field(None, ge=1, le=MAX_FRAMES)
    guidance_scale: float = 3.5
    negative_prompt: str = ""
    max_sequence_length: Optional[int] = Field(None, ge=1)
    pipeline_kwargs: dict[str, Any] = Field(default_factory=dict)


class CalibrationCfg(_Strict):
    """Calibration prompts, seeds and the held-out fraction."""

    prompts: str = "../prompts/tiny-calibration.txt"
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    holdout: float = Field(0.25, gt=0, lt=1)
    micro_batch: int = Field(0, ge=0)  # split transformer calls into chunks of this many samples (0: whole batch)


class EvalCfg(_Strict):
    """Evaluation prompts, seeds, metrics and warm-up."""

    prompts: str = "../prompts/tiny-eval.txt"
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    metrics: list[str] = Field(default_factory=lambda: ["psnr", "ssim"], min_length=1)
    warmup: int = Field(1, ge=0)
    timing_samples: int = Field(4, ge=1)
    timing_rounds: int = Field(3, ge=1)


class CacheCfg(_Strict):
    """Residual cache settings."""

    residual: Literal[RESIDUALS] = "hidden"
    predictor: Literal[KINDS] = "reuse"
    order: Literal[ORDERS] = 1
    abscissa: Literal[ABSCISSAE] = "sigma"


class SearchCfg(_Strict):
    """Cached-step search settings."""

    lambdas: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2], min_length=1
    )
    nfe: list[Annotated[int, Field(ge=2)]] = Field(default_factory=list)  # sweep's matched-NFE targets
    auto: bool = False  # `--method auto`: search the configuration (ertacli/calibration/auto.py), not a lambda
    auto_trials: int = Field(default=40, ge=1)  # candidates auto scores at most (`--auto-trials`)


class FitCfg(_Strict):
    """Timestep adjustment and rectification fit settings."""

    adjust: Toggle = "auto"
    rectify: Toggle = "auto"
    rectify_form: Literal[FORMS] = "linear"
    granularity: Literal[GRANULARITIES] = "scalar"
    gain: Toggle = "auto"  # only extrapolate plans have a gain to fit
    optimize_placement: bool = False
    placement_trials: int = Field(default=0, ge=0)


class Recipe(_Strict):
    """A fully resolved recipe (defaults < includes < recipe < --set)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")  # one folder name under results/
    include: Optional[str] = None
    description: str = ""
    model: ModelCfg
    sampling: SamplingCfg = Field(default_factory=SamplingCfg)
    calibration: CalibrationCfg = Field(default_factory=CalibrationCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    cache: CacheCfg = Field(default_factory=CacheCfg)
    search: SearchCfg = Field(default_factory=SearchCfg)
    fit: FitCfg = Field(default_factory=FitCfg)

    _source_path: Optional[Path] = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _adapter_needs_latent(self) -> "Recipe":
        """An adapter model hides its block stack: only latent- or velocity-space residuals can be cached."""
        if self.model.adapter and self.cache.residual == "hidden":
            raise ValueError("an adapter model exposes no block stack; set cache.residual: latent")
        return self

    @property
    def source_path(self) -> Optional[Path]:
        """Absolute path of the recipe file this was resolved from (None if built in code)."""
        return self._source_path

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the recipe are resolved against."""
        return self._source_path.parent if self._source_path else Path.cwd()

    def prompt_file(self, kind: PromptKind) -> Path:
        """Absolute path of the calibration or eval prompt file."""
        if kind not in ("calibration", "eval"):
            raise ValueError(f"prompt kind must be 'calibration' or 'eval', got {kind!r}")
        section = self.calibration if kind == "calibration" else self.eval
        path = Path(section.prompts).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.base_dir / path))

    def read_prompts(self, kind: PromptKind) -> list[str]:
        """The prompts of the calibration or eval prompt file."""
        return read_prompt_file(self.prompt_file(kind))

    def resolved_dict(self, absolute_paths: bool = False) -> dict[str, Any]:
        """The resolved recipe as plain JSON-able data, includes flattened; absolute_paths: every file path the
        recipe names (prompts, a ./ or ../ model.path, an adapter file) absolute, as a run folder records it."""
        data = self.model_dump(mode="json", exclude={"include"})
        if absolute_paths:
            for kind in ("calibration", "eval"):
                data[kind]["prompts"] = str(self.prompt_file(kind))
            data["model"]["path"] = self.model_dir()
            data["model"]["adapter"] = self.adapter_spec()
        return data

    def model_dir(self) -> Optional[str]:
        """model.path with a ./ or ../ path taken from the recipe's folder (as the loader reads it)."""
        raw = self.model.path
        if raw is None:
            return None
        raw = os.path.expanduser(raw)
        if raw in (".", "..") or raw.startswith(("./", "../")):
            beside = os.path.normpath(os.path.join(str(self.base_dir), raw))
            if os.path.exists(beside) or not os.path.exists(raw):
                return beside
            return os.path.abspath(raw)
        return raw

    def adapter_spec(self) -> Optional[str]:
        """model.adapter with a file path made absolute (from the recipe's folder, else the working folder)."""
        spec = self.model.adapter
        if not spec:
            return spec
        module, sep, func = spec.rpartition(":")
        if not sep or not (module.endswith(".py") or "/" in module):
            return spec
        path = Path(module).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path if (self.base_dir / path).is_file() else Path.cwd() / path
        return f"{os.path.normpath(path)}:{func}"

    def adapter_file(self) -> Optional[Path]:
        """The Python file an adapter recipe imports (None for no adapter or an installed module)."""
        spec = self.adapter_spec()
        module = (spec or "").rpartition(":")[0]
        return Path(module) if module.endswith(".py") or "/" in module else None

    def to_yaml(self, absolute_paths: bool = False) -> str:
        """The resolved recipe as YAML, includes flattened (prompt paths absolute if asked)."""
        data = self.resolved_dict(absolute_paths)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)

    def digest(self) -> str:
        """First 16 hex of the sha256 of the canonical JSON of the recipe, without description."""
        data = self.resolved_dict()
        data.pop("description", None)
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def find_recipe(name_or_path: str | Path) -> Path:
    """Path of a recipe: an existing file path, else NAME.yaml on the search path (ertacli.assets.search_path)."""
    raw = str(name_or_path)
    if not raw or len(raw) > 4096 or any(ord(c) < 32 for c in raw):
        raise UserError(f"recipe {raw[:60]!r}: a recipe name or path holds no control characters (NUL, newline) "
                        f"and is at most 4096 characters; see 'ertacache recipes'")
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        from .backbones.recipe_writer import folder_recipe, is_pipeline_dir

        if is_pipeline_dir(path):  # --model DIR: a diffusers pipeline folder, through a recipe read from it
            return folder_recipe(path)
    if "/" in raw or os.sep in raw:
        raise UserError(f"recipe file not found: {raw} (give an existing file or a recipe name; see 'ertacache recipes')")
    name = raw[:-5] if raw.endswith(".yaml") else raw[:-4] if raw.endswith(".yml") else raw
    found = find_named(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name, [r.name for r in available_recipes()], n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    if Path(f"{name}.yaml").is_file():
        hint = f"to use ./{name}.yaml pass --model {name}.yaml; "
    raise UserError(f"unknown recipe '{name}' (searched {describe_search_path()}); {hint}"
                    "run 'ertacache recipes' to list them")


def _deep_merge(base: dict, top: dict) -> dict:
    """Merge top over base: dicts recursively, everything else replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    """Parse one YAML recipe file into a mapping, errors as one-line UserError."""
    text = read_text_bounded(path, MAX_RECIPE_BYTES, "recipe")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: YAML nested deeper than {MAX_DEPTH} levels; fix the recipe file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: invalid YAML{where}: {problem}; fix the recipe file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of keys, got {type(data).__name__}")
    if depth(data) > MAX_DEPTH:
        raise UserError(f"{path}: YAML nested deeper than {MAX_DEPTH} levels; fix the recipe file")
    return data


def _rebase_prompts(data: dict, src_dir: Path, dst_dir: Path) -> dict:
    """Make an included file's relative prompt paths (and ./ or ../ model.path) relative to the including file."""
    if src_dir == dst_dir:
        return data
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"].startswith(("./", "../")):
        rel = os.path.relpath(src_dir / model["path"], dst_dir)
        model["path"] = rel if rel.startswith("..") else f"./{rel}"
    for section in ("calibration", "eval"):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("prompts"), str):
            p = Path(sec["prompts"]).expanduser()
            if not p.is_absolute():
                sec["prompts"] = os.path.relpath(src_dir / p, dst_dir)
    return data


def load_raw(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict:
    """Raw recipe mapping of a file with its `include:` chain merged (base < this file)."""
    path = Path(path)
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(p.name for p in (*_stack, real))
        raise UserError(f"{path}: include cycle {chain}; remove one of the include: lines")
    data = _read_yaml(path)
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str) or not include.strip():
        raise UserError(f"{path}: 'include' must be a file path string, got {include!r}")
    inc = path.parent / Path(include).expanduser()
    if not inc.exists():
        raise UserError(f"{path}: included file not found: {inc} (include paths are relative to the recipe's folder)")
    base = _rebase_prompts(load_raw(inc, (*_stack, real)), inc.resolve().parent, real.parent)
    return _deep_merge(base, data)


def _parse_value(text: str) -> Any:
    """An override value parsed as YAML (numbers, lists, null), raw string if not valid YAML."""
    if text.strip() == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except RecursionError:
        deep = True
    else:
        deep = depth(value) > MAX_DEPTH
    if deep:
        raise UserError(f"--set value {text[:40]!r}...: nested deeper than {MAX_DEPTH} levels; give a plain value")
    return value


def parse_overrides(overrides: list[str] | tuple[str, ...] | None) -> dict:
    """Nested mapping from `key.path=value` override strings."""
    out: dict[str, Any] = {}
    for item in overrides or ():
        if len(item) > MAX_OVERRIDE_CHARS or "\x00" in item:
            raise UserError(f"--set {item[:40]!r}...: longer than {MAX_OVERRIDE_CHARS} characters or holds a NUL "
                            f"byte; give KEY.PATH=VALUE")
        key, sep, value = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set sampling.steps=20")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(value)
    return out


def _format_validation(path: Path, exc: ValidationError) -> str:
    """One line naming the dotted field path of the first validation error."""
    errors = exc.errors()
    err = errors[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        return f"recipe {path}: unknown key '{field}'{more}; fix the recipe or --set"
    msg = err["msg"].removeprefix("Value error, ")
    got = "" if err["type"] == "missing" or isinstance(err.get("input"), dict) else f" (got {err['input']!r})"
    return f"recipe {path}: field '{field}': {msg}{got}{more}; fix the recipe or --set"


def resolve_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] | None = None) -> Recipe:
    """The one place defaults < includes < recipe < --set overrides are resolved."""
    path = find_recipe(name_or_path)
    raw = _deep_merge(load_raw(path), parse_overrides(overrides))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_validation(path, exc)) from None
    recipe._source_path = path.resolve()
    return recipe


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """The same recipe with `--set`-style overrides applied on top (validated; same source file)."""
    raw = _deep_merge(recipe.model_dump(), parse_overrides(overrides))
    try:
        out = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_validation(recipe.source_path or Path(recipe.name), exc)) from None
    out._source_path = recipe._source_path
    return out


def list_recipes() -> list[tuple[str, Recipe | str]]:
    """(name, Recipe or one-line error) for every named recipe on the search path."""
    out: list[tuple[str, Recipe | str]] = []
    for found in available_recipes():
        try:
            out.append((found.name, resolve_recipe(found.path)))
        except UserError as exc:
            out.append((found.name, str(exc)))
    return out
