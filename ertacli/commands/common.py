"""What every command shares: the resolved recipe, the loaded pipeline, sample sets and run-directory files."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..plan import prompts_digest, recipe_key
from ..recipe import Recipe, read_prompt_file, resolve_recipe, results_dir
from ..rundir import RunDir, env_info, latest_run


@dataclass
class Samples:
    """A prompts x seeds set, expanded to one (prompt, seed) pair per sample."""

    prompts: list[str]
    seeds: list[int]

    @classmethod
    def grid(cls, prompts: list[str], seeds: list[int]) -> "Samples":
        return cls([p for p in prompts for _ in seeds], [int(s) for _ in prompts for s in seeds])

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: list[int]) -> "Samples":
        return Samples([self.prompts[i] for i in idx], [self.seeds[i] for i in idx])

    def digest(self) -> str:
        return prompts_digest(self.prompts, self.seeds)

    def to_json(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "digest": self.digest()}

    def mine(self) -> tuple[list[int], "Samples"]:
        """This rank's deterministic shard (indices and samples); everything in one process."""
        from ..dist import WORLD

        if len(self) < WORLD.size:
            raise UserError(f"{len(self)} samples cannot be split over {WORLD.size} processes; "
                            f"add prompts/seeds or launch fewer processes")
        idx = WORLD.shard(len(self))
        return idx, self.subset(idx)


@dataclass
class Job:
    """One command's inputs: recipe, device, argv; loads the pipeline once, on first use."""

    recipe: Recipe
    device: str
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    quiet: bool = False
    _loaded: Any = None

    @classmethod
    def make(cls, model: str, overrides: list[str] | None, device: str | None,
             argv: list[str] | None = None, quiet: bool = False, method: str | None = None) -> "Job":
        from ..backbones.loader import resolve_device
        from ..dist import WORLD, init, launched, local_device
        from ..presets import method_overrides

        recipe = resolve_recipe(model, method_overrides(method) + list(overrides or []))
        dev = local_device(device or ("cuda" if launched() and _cuda() else None) or resolve_device(None))
        dev = resolve_device(dev)
        init(dev)
        return cls(recipe, dev, list(argv if argv is not None else sys.argv), quiet or not WORLD.main)

    @property
    def loaded(self):
        if self._loaded is None:
            from ..backbones.loader import load_pipeline

            self._loaded = load_pipeline(self.recipe, self.device)
        return self._loaded

    def variant(self, overrides: list[str]) -> "Job":
        """This job with recipe overrides on top (e.g. a method preset), sharing the loaded pipeline."""
        from ..recipe import with_overrides

        return Job(with_overrides(self.recipe, overrides), self.device, self.argv, self.quiet, self.loaded)

    @property
    def key(self) -> str:
        return recipe_key(self.recipe)

    def calibration(self) -> Samples:
        return Samples.grid(self.recipe.read_prompts("calibration"), list(self.recipe.calibration.seeds))

    def eval_samples(self, prompts: list[str] | None = None, prompts_file: str | None = None,
                     seeds: list[int] | None = None) -> Samples:
        """--prompt, then --prompts FILE, then the recipe's eval prompts; --seed or the recipe's eval seeds."""
        if prompts:
            chosen = list(prompts)
        elif prompts_file:
            chosen = read_prompt_file(prompts_file)
        else:
            chosen = self.recipe.read_prompts("eval")
        return Samples.grid(chosen, list(seeds) if seeds else list(self.recipe.eval.seeds))

    def rundir(self, command: str, resumable: bool = False, existing: str | Path | None = None,
               shared: bool = False) -> RunDir:
        """Rank 0 owns the run directory; other ranks write into the same one (shared) or into scratch."""
        import tempfile

        from ..dist import WORLD, broadcast

        lead = RunDir(self.recipe.name, command, self.argv, resumable=resumable, existing=existing)
        if not WORLD.active:
            return lead
        path = broadcast(str(lead.tmp_path))
        if WORLD.main:
            return lead
        where = path if shared else tempfile.mkdtemp(prefix=f"ertacache-rank{WORLD.rank}-")
        return RunDir(self.recipe.name, command, self.argv, existing=where, lead=False)

    def finished(self, run: RunDir) -> Path:
        """The run's final path on every rank (rank 0 renamed it); a follower's scratch folder is removed."""
        import shutil

        from ..dist import WORLD, barrier, broadcast

        if not WORLD.active:
            return run.final_path
        barrier()
        if not WORLD.main and Path(run.tmp_path).name.startswith("ertacache-rank"):
            shutil.rmtree(run.tmp_path, ignore_errors=True)
        return Path(broadcast(str(run.final_path) if WORLD.main else None))

    def start(self, run: RunDir, command: str, seeds: list[int]) -> None:
        """The files every run directory holds: resolved recipe, exact command line, environment (rank 0)."""
        from ..dist import WORLD

        if not WORLD.main:
            return
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        run.on_finish.append(lambda: write_resources(run, self.device))
        run.write_text("recipe.yaml", self.recipe.to_yaml(absolute_paths=True))
        run.write_json("argv.json", {"argv": self.argv, "cwd": os.getcwd(), "command": command})
        run.write_json("env.json", env_info(self.device, self.recipe.model.dtype, seeds))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def progress_bar(quiet: bool = False):
    """A Rich progress bar for long loops (disabled when quiet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=quiet, transient=True)


def calibration_pass(job: "Job", controller, samples: "Samples", label: str):
    """One lockstep pipeline call of the calibration batch under `controller`, with a step progress bar."""
    from ..engine import Session

    with Session(job.loaded, controller, job.recipe.calibration.micro_batch) as session, \
            progress_bar(job.quiet) as bar:
        task = bar.add_task(label, total=job.recipe.sampling.steps)
        return session.run_batch(job.recipe, samples.prompts, samples.seeds, on_step=lambda: bar.advance(task))


def gather_rows(idx: list[int], t):
    """Rows of `t` computed on each rank for sample indices `idx`, put back in sample order (on every rank)."""
    import torch

    from ..dist import WORLD, gather

    if not WORLD.active:
        return t
    parts = gather((idx, t.cpu()))
    order = sorted((i, k, j) for k, (ids, _) in enumerate(parts) for j, i in enumerate(ids))
    return torch.stack([parts[k][1][j] for _, k, j in order])


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})")


def find_run(recipe_name: str, command: str, marker: str, match: Callable[[dict], bool]) -> Path | None:
    """Newest complete run of `command` whose `marker` JSON file satisfies `match`."""
    def ok(p: Path) -> bool:
        f = p / marker
        if not f.is_file():
            return False
        try:
            return match(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            return False

    return latest_run(recipe_name, command, predicate=ok, results_dir=results_dir())


def save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing: the run directory is incomplete; re-run the command that made it")
    return load_file(str(path))


def peak_memory(device: str) -> dict:
    """Peak memory so far: CUDA max allocated (and reserved) on a GPU, else this process's peak RSS."""
    import resource

    if str(device).startswith("cuda"):
        import torch

        return {"kind": "cuda_max_memory_allocated", "device": str(device),
                "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_peak_rss", "device": str(device),
            "peak_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def write_resources(run: RunDir, device: str) -> dict:
    """Record peak memory into the run directory's resources.json (call just before the run completes)."""
    info = peak_memory(device)
    run.write_json("resources.json", info)
    return info
