"""generate --resume: the recorded run is the run; its settings digest, and options that contradict it refused.

A resumed run takes its recipe (`recipe.yaml`, overrides included), model, plan, prompts, seeds, device and
compile setting from the run directory. An option given again with the same value is accepted; one that
contradicts the record is one line naming the field. Every sample record carries the digest of the settings it
was made with (`settings_of`), and the run is only finalised when every record agrees.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError
from ..runs.artifacts import read_json
from ..runs.job import Job

INPUTS = "inputs.json"


@dataclass
class ResumeOptions:
    """The generate options given next to --resume (None / empty: not given)."""

    model: str | None = None
    sets: list[str] = field(default_factory=list)
    plan: str | None = None
    prompt: list[str] = field(default_factory=list)
    prompts: str | None = None
    seed: list[int] = field(default_factory=list)
    device: str | None = None
    compile: bool = False
    trust_adapter: bool = False  # the run's recipe may import its model.adapter file (never by default)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_of(job: Job, runner) -> dict:
    """What a sample's numbers depend on: recipe, method (plan file content included), device, dtype, compile."""
    plan = getattr(runner, "plan", None)
    method = {k: v for k, v in runner.info.items() if k != "plan"}
    if plan is not None:
        method["plan_digest"] = _sha(json.dumps(plan.to_json(), sort_keys=True, default=str))
    return {"recipe": _sha(job.recipe.to_yaml(absolute_paths=True)), "method": _sha(json.dumps(method, sort_keys=True,
            default=str)), "device": str(job.device), "dtype": str(job.recipe.model.dtype), "compile": bool(job.compile)}


def settings_digest(settings: dict) -> str:
    return _sha(json.dumps(settings, sort_keys=True))


def check_settings(run_dir: Path, recorded: dict | None, current: dict) -> None:
    """Refuse to continue a run whose recorded settings differ from the ones this process would use."""
    if not recorded:
        raise UserError(f"{run_dir}: {INPUTS} records no settings digest (made by an older ertacache); "
                        f"re-run it from the start")
    diff = [k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    if diff:
        raise UserError(f"--resume {run_dir}: the run was made with other {', '.join(diff)} settings than this "
                        f"resume would use (was a file it names edited?); re-run it from the start")


def resume_dir(path: str | Path) -> tuple[Path, dict]:
    """An interrupted generate run directory and its recorded inputs."""
    p = Path(path)
    if p.name.startswith("generate-") and (p / "generate.json").is_file():
        raise UserError(f"{p} is already complete; nothing to resume (`ertacache reproduce {p}` re-runs it)")
    if not p.name.startswith(".tmp-generate-") or not (p / INPUTS).is_file() or not (p / "recipe.yaml").is_file():
        raise UserError(f"{p} is not an interrupted generate run (look for results/<recipe>/.tmp-generate-*, "
                        f"or run `ertacache runs`)")
    info = read_json(p / INPUTS)
    samples = info.get("samples") if isinstance(info, dict) else None
    if not isinstance(info.get("method") if isinstance(info, dict) else None, dict) or not isinstance(samples, dict) \
            or not isinstance(samples.get("prompts"), list) or not isinstance(samples.get("seeds"), list):
        raise UserError(f"{p / INPUTS}: not the inputs of a generate run (method, samples.prompts/seeds); re-run it "
                        f"from the start")
    if info["method"].get("kind") == "peer":
        raise UserError(f"{p} was made with a peer cache; re-run `ertacache eval --compare` instead of resuming")
    return p, info


def _refuse(run: Path, option: str, given, recorded) -> None:
    raise UserError(f"--resume {run}: {option} {given} contradicts the run's {recorded}; resume without it "
                    f"(a resumed run uses its recorded settings)")


def _check_recipe(run: Path, job: Job, opts: ResumeOptions) -> None:
    """--model must name the recorded recipe; --set must leave the recorded recipe.yaml unchanged."""
    import yaml

    from ..recipe import resolve_recipe, with_overrides

    if opts.model and resolve_recipe(opts.model).name != job.recipe.name:
        _refuse(run, "--model", opts.model, f"recipe {job.recipe.name}")
    if not opts.sets:
        return
    mine = with_overrides(job.recipe, list(opts.sets))
    old, new = (yaml.safe_load(r.to_yaml(absolute_paths=True)) for r in (job.recipe, mine))
    for section in old:
        for key in old[section] if isinstance(old[section], dict) else []:
            if old[section][key] != new[section].get(key):
                _refuse(run, "--set", f"{section}.{key}={new[section].get(key)}", f"{section}.{key}={old[section][key]}")
    if old != new:
        _refuse(run, "--set", " ".join(opts.sets), "recipe.yaml")


def _check_inputs(run: Path, job: Job, info: dict, opts: ResumeOptions) -> None:
    """--plan, --prompt(s), --seed, --device, --compile must agree with the record."""
    from ..backbones.loader import resolve_device
    from ..plan import find_plan_dir
    from ..recipe import read_prompt_file

    recorded_plan = info["method"].get("plan")
    if opts.plan is not None:
        mine = find_plan_dir(opts.plan).resolve()
        if recorded_plan is None or mine != Path(recorded_plan).resolve():
            _refuse(run, "--plan", opts.plan, f"plan {recorded_plan or '(none: uncached baseline)'}")
    samples = Samples(info["samples"]["prompts"], info["samples"]["seeds"])
    given = list(opts.prompt) or (read_prompt_file(opts.prompts) if opts.prompts else [])
    if given and given != samples.unique_prompts():
        _refuse(run, "--prompt/--prompts", f"({len(given)} prompts)", f"{len(samples.unique_prompts())} prompts")
    if opts.seed and [int(s) for s in opts.seed] != list(dict.fromkeys(samples.seeds)):
        _refuse(run, "--seed", list(opts.seed), f"seeds {list(dict.fromkeys(samples.seeds))}")
    settings = info.get("settings") or {}
    if opts.device and resolve_device(opts.device) != settings.get("device"):
        _refuse(run, "--device", opts.device, f"device {settings.get('device')}")
    if opts.compile and not settings.get("compile"):
        _refuse(run, "--compile", "", "uncompiled run")


def resume_job(path: str | Path, opts: ResumeOptions, quiet: bool = False) -> tuple[Job, Samples, str | None, Path]:
    """The job, samples and plan of an interrupted generate run, rebuilt from its directory (options checked)."""
    run, info = resume_dir(path)
    device = (info.get("settings") or {}).get("device")
    job = Job.make(str(run / "recipe.yaml"), [], opts.device or device, quiet=quiet)
    from .reproduce import adapter_gate

    adapter_gate(job.recipe, opts.trust_adapter, f"--resume {run}")
    job.compile = bool((info.get("settings") or {}).get("compile"))
    _check_recipe(run, job, opts)
    _check_inputs(run, job, info, opts)
    return job, Samples(info["samples"]["prompts"], info["samples"]["seeds"]), info["method"].get("plan"), run
