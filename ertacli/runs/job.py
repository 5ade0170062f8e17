"""One command's inputs: the resolved recipe, the device, the loaded pipeline, sample sets and its run directory."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibration.samples import Samples
from ..plan import model_id, recipe_key
from ..recipe import Recipe, read_prompt_file, resolve_recipe
from .artifacts import write_resources
from .rundir import RunDir, env_info


@dataclass
class Job:
    """A command's recipe, device and argv; loads the pipeline once, on first use."""

    recipe: Recipe
    device: str
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    quiet: bool = False
    loaded_pipeline: Any = None
    compile: bool = False
    model_arg: str | None = None  # --model as given, and every override applied, so a sub-run can name its own
    sets: list[str] = field(default_factory=list)  # command line (see `as_command`)
    known_model: dict | None = field(default=None, repr=False)  # the model's identity, once computed

    @classmethod
    def make(cls, model: str, overrides: list[str] | None, device: str | None,
             argv: list[str] | None = None, quiet: bool = False, method: str | None = None) -> "Job":
        """Resolve the recipe (preset, then --set), pick the device, join a launched process group."""
        from ..backbones.loader import resolve_device
        from ..dist import WORLD, init, launched, local_device
        from ..presets import method_overrides

        sets = method_overrides(method) + list(overrides or [])
        recipe = resolve_recipe(model, sets)
        dev = local_device(device or ("cuda" if launched() and _cuda() else None) or resolve_device(None))
        dev = resolve_device(dev)
        init(dev)
        return cls(recipe, dev, list(argv if argv is not None else sys.argv), quiet or not WORLD.main,
                   model_arg=str(model), sets=sets)

    @property
    def loaded(self):
        """The recipe's pipeline on the device (loaded on first use)."""
        if self.loaded_pipeline is None:
            from ..backbones.loader import load_pipeline

            self.loaded_pipeline = load_pipeline(self.recipe, self.device)
        return self.loaded_pipeline

    @property
    def sampler(self):
        """The loaded pipeline with this recipe's call settings."""
        from ..backbones.sampler import Sampler

        from ..limits import check_fits

        sampler = Sampler.from_recipe(self.loaded, self.recipe)
        check_fits(sampler, self.device)
        sampler.compile = self.compile or sampler.compile
        return sampler

    def variant(self, overrides: list[str]) -> "Job":
        """This job with recipe overrides on top (e.g. a method preset), sharing the loaded pipeline."""
        from ..recipe import with_overrides

        return Job(with_overrides(self.recipe, overrides), self.device, self.argv, self.quiet, self.loaded,
                   self.compile, self.model_arg, self.sets + list(overrides))

    def as_command(self, command: str, *args: str) -> "Job":
        """This job recording, for a run it makes inside another command (a sweep's profile, search, fit,
        TeaCache fit), the command line that makes that run on its own, so `reproduce` re-runs just that."""
        from dataclasses import replace

        if self.model_arg is None or self.argv[1:2] == [command]:
            return self
        argv = [self.argv[0] if self.argv else "ertacache", command, "--model", self.model_arg]
        for s in self.sets:
            argv += ["--set", s]
        return replace(self, argv=argv + [str(a) for a in args], loaded_pipeline=self.loaded)

    @property
    def model_identity(self) -> dict:
        """The model by content: transformer class, config and weights digest (cached per model folder)."""
        if self.known_model is None:
            from ..identity import recipe_identity

            self.known_model = recipe_identity(self.recipe, lambda: self.loaded)
        return self.known_model

    @property
    def key(self) -> str:
        """Digest of the model (by content) and the sampling settings: what reused runs must share."""
        return recipe_key(self.recipe, self.model_identity)

    def run_settings(self):
        """This job's settings in the user's terms, with its model identity (what `--plan` is checked against)."""
        from ..plan_settings import recipe_settings

        settings = recipe_settings(self.recipe, self.loaded_pipeline, lambda: self.loaded, self.model_identity)
        settings.legacy_key = recipe_key(self.recipe)
        return settings

    def identity(self, profile_run: str | Path | None = None) -> dict:
        """How plans made by this job name their model and settings (recipe, settings key, model id, the model
        by content, the settings in the user's terms, the command, profile run)."""
        command = f"ertacache {self.argv[1]}" if len(self.argv) > 1 else "ertacache"
        return {"recipe": self.recipe.name, "recipe_key": self.key, "model_id": model_id(self.recipe),
                "settings": self.run_settings().to_json(), "model": self.model_identity, "made_by": command,
                "profile_run": str(profile_run) if profile_run is not None else None}

    def calibration(self) -> Samples:
        return Samples.grid(self.recipe.read_prompts("calibration"), list(self.recipe.calibration.seeds))

    def eval_samples(self, prompts: list[str] | None = None, prompts_file: str | None = None,
                     seeds: list[int] | None = None) -> Samples:
        """--prompt, then --prompts FILE, then the recipe's eval prompts; --seed or the recipe's eval seeds."""
        from ..limits import check_prompts

        if prompts:
            chosen = check_prompts(list(prompts))
        elif prompts_file:
            chosen = read_prompt_file(prompts_file)
        else:
            chosen = self.recipe.read_prompts("eval")
        return Samples.grid(chosen, list(seeds) if seeds else list(self.recipe.eval.seeds))

    def timing(self) -> dict:
        """The recipe's paired-timing settings: alternated rounds and samples per round."""
        return {"rounds": self.recipe.eval.timing_rounds, "n_samples": self.recipe.eval.timing_samples}

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
