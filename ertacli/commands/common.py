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
             argv: list[str] | None = None, quiet: bool = False) -> "Job":
        from ..backbones.loader import resolve_device

        recipe = resolve_recipe(model, overrides or [])
        return cls(recipe, resolve_device(device), list(argv if argv is not None else sys.argv), quiet)

    @property
    def loaded(self):
        if self._loaded is None:
            from ..backbones.loader import load_pipeline

            self._loaded = load_pipeline(self.recipe, self.device)
        return self._loaded

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

    def rundir(self, command: str) -> RunDir:
        return RunDir(self.recipe.name, command, self.argv)

    def start(self, run: RunDir, command: str, seeds: list[int]) -> None:
        """The files every run directory holds: resolved recipe, exact command line, environment."""
        run.write_text("recipe.yaml", self.recipe.to_yaml(absolute_paths=True))
        run.write_json("argv.json", {"argv": self.argv, "cwd": os.getcwd(), "command": command})
        run.write_json("env.json", env_info(self.device, self.recipe.model.dtype, seeds))


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
