"""Export a plan's computed-step set to other caching runtimes (for now cache-dit's `steps_computation_mask`).

cache-dit reads one mask per denoising step, 1 = compute, 0 = use the cache, and applies it to every transformer
call of that step: with separate CFG (Wan: a cond and an uncond call per step) both calls look up the same entry.
A plan whose branches cache different steps therefore exports the intersection (a step is cached only when every
branch caches it), or one named branch's set applied to all branches. Only the step set carries over.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

TARGETS = ("cache-dit",)
EXPORT_FORMAT = "cache-dit"


def _checked_sets(plan) -> dict[str, set[int]]:
    """Each branch's cached steps, refusing steps outside first+1..last of its stream (step 0, a stream's first
    step, is always computed; T-1 may be cached)."""
    sets = plan.cached_sets()
    for b, s in sets.items():
        first, last = (getattr(plan, "streams", None) or {}).get(b, (0, plan.steps - 1))
        bad = sorted(k for k in s if k <= int(first) or k > int(last))
        if bad:
            raise UserError(f"plan branch {b} caches steps {bad}; it can cache steps {int(first) + 1}..{int(last)} "
                            f"(its first step {int(first)} is always computed)")
    return sets


def _chosen_steps(plan, branch: str | None) -> tuple[set[int], str]:
    """The step set to export and a label saying where it came from."""
    sets = _checked_sets(plan)
    if branch is not None:
        if branch not in sets:
            raise UserError(f"--branch {branch}: the plan has branches {', '.join(plan.branches)}")
        return sets[branch], branch
    if len(sets) == 1:
        (name, steps), = sets.items()
        return steps, name
    return _active_intersection(plan, sets), "intersection(" + ",".join(plan.branches) + ")"


def _runs_at(plan, branch: str, k: int) -> bool:
    """Whether a branch's stream runs at step k (a Wan2.2 expert's streams run a range of the steps)."""
    first, last = (getattr(plan, "streams", None) or {}).get(branch, (0, plan.steps - 1))
    return int(first) <= k <= int(last)


def _active_intersection(plan, sets: dict[str, set[int]]) -> set[int]:
    """Steps cached by every branch that runs at that step (all branches, unless the plan has expert streams)."""
    out = set()
    for k in range(plan.steps):
        active = [b for b in sets if _runs_at(plan, b, k)]
        if active and all(k in sets[b] for b in active):
            out.add(k)
    return out


def _not_carried(plan, steps: set[int], label: str) -> list[str]:
    """What the exported file cannot express for this plan, one line each."""
    out = []
    for b, s in _checked_sets(plan).items():
        lost, extra = sorted(s - steps), sorted(k for k in steps - s if _runs_at(plan, b, k))
        if lost:
            out.append(f"branch {b} caches steps {lost} in the plan; computed in the export ({label})")
        if extra:
            out.append(f"branch {b} computes steps {extra} in the plan; cached in the export ({label})")
    pred = plan.predictor or {}
    out.append(f"predictor {pred.get('kind', 'reuse')} {json.dumps({k: v for k, v in pred.items() if k != 'kind'})}: "
               "cache-dit reuses its own residual of the non-Fn blocks on cached steps")
    if plan.adjusted_sigmas is not None:
        out.append("timestep adjustment (adjusted_sigmas): cache-dit runs the scheduler's own sigmas")
    if plan.rectify and plan.rectify.get("enabled"):
        out.append(f"rectification ({plan.rectify.get('granularity')} a, b): cache-dit has no output rectification")
    out.append("cache-dit still runs the first Fn_compute_blocks=1 transformer block on cached steps")
    return out


def cache_dit_mask(plan, branch: str | None = None, source: str | Path | None = None) -> dict:
    """The JSON-able cache-dit export of `plan`: the mask, its provenance and what does not carry over."""
    steps, label = _chosen_steps(plan, branch)
    T = int(plan.steps)
    mask = [0 if k in steps else 1 for k in range(T)]
    separate_cfg = len({b.split("/")[-1] for b in plan.branches}) > 1  # Wan2.2: high/cond and low/cond: one branch
    return {
        "format": EXPORT_FORMAT,
        "num_inference_steps": T,
        "steps_computation_mask": mask,
        "branch": label,
        "carries_over": [f"cached steps {sorted(steps)} of {T} (mask 0, static policy: always taken from the cache)",
                         f"one mask per denoising step for every transformer call of that step "
                         f"(enable_separate_cfg={separate_cfg}: branches {', '.join(plan.branches)})"],
        "does_not_carry_over": _not_carried(plan, steps, label),
        "source_plan": {"path": str(source) if source is not None else None, "recipe": plan.recipe,
                        "model_id": plan.model_id, "recipe_key": plan.recipe_key, "method": plan.method,
                        "lambda": plan.lam, "created_at": plan.created_at,
                        "cached_steps": {b: sorted(plan.cached_steps.get(b, [])) for b in plan.branches}},
        # Keyword arguments of cache_dit.DBCacheConfig; cache_dit.load_cache_config(file) reads this section too.
        "cache_config": {"num_inference_steps": T, "steps_computation_mask": mask,
                         "steps_computation_policy": "static", "enable_separate_cfg": separate_cfg,
                         "Fn_compute_blocks": 1, "Bn_compute_blocks": 0},
    }


def export_plan(plan, to: str, branch: str | None = None, source: str | Path | None = None) -> dict:
    """The export of `plan` for runtime `to`."""
    if to != "cache-dit":
        raise UserError(f"--to {to}: unknown export target; choose one of {', '.join(TARGETS)}")
    return cache_dit_mask(plan, branch=branch, source=source)


def output_path(out: str | Path | None, to: str) -> Path:
    """Where `ertacache export` writes: --out as given, else ./<to>.json in the working folder (never next to the
    plan, which may sit inside a finished run that must stay as it was made); an existing default is not replaced."""
    if out is not None:
        return Path(out)
    path = Path.cwd() / f"{to}.json"
    if path.exists() or path.is_symlink():
        raise UserError(f"{path} already exists; pass --out FILE to write there (or elsewhere)")
    return path


def write_export(plan, path: str | Path, to: str = "cache-dit", branch: str | None = None,
                 source: str | Path | None = None) -> Path:
    """Write the export of `plan` for `to` as JSON to `path` (never through a link into a run folder)."""
    from .runs.guard import target

    data = export_plan(plan, to, branch=branch, source=source)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    target(p).write_text(json.dumps(data, indent=1) + "\n")
    return p


def read_export(path: str | Path) -> dict:
    """Read and check a cache-dit export file; malformed files give a one-line error."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        T, mask, kwargs = data["num_inference_steps"], data["steps_computation_mask"], data["cache_config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{p}: not a readable cache-dit export ({exc}); re-run `ertacache export`")
    if data.get("format") != EXPORT_FORMAT:
        raise UserError(f"{p}: format {data.get('format')!r}, expected {EXPORT_FORMAT!r}")
    if len(mask) != T or any(m not in (0, 1) for m in mask) or kwargs.get("steps_computation_mask") != mask:
        raise UserError(f"{p}: steps_computation_mask must be {T} entries of 0/1, the same in cache_config")
    return data


def load_into_cache_dit(path: str | Path):
    """A `cache_dit.DBCacheConfig` built from an export file."""
    data = read_export(path)
    try:
        from cache_dit import DBCacheConfig
    except ImportError as exc:
        raise UserError(f"cache-dit is not importable ({exc}); pip install 'ertacache[peers]'")
    return DBCacheConfig(**data["cache_config"])
