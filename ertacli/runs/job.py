"""One command's inputs: the resolved recipe, the device, the loaded pipeline and the sample sets (`Job`), and,
apart from them, how its runs are recorded (`Recorder`, runs/recorder.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..calibration.samples import Samples
from ..plan import model_id, recipe_key
from ..recipe import Recipe, read_prompt_file, resolve_recipe
from .recorder import Recorder
from .rundir import RunDir


@dataclass
class Job:
    """A command's recipe and device; loads the pipeline once, on first use. `recorder` records its runs."""

    recipe: Recipe
    device: str
    recorder: Recorder
    quiet: bool = False
    loaded_pipeline: Any = None
    compile: bool = False
    calibration_set: Samples | None = None  # the calibration prompt file, read once (`calibration()`)
    known_model: dict | None = field(default=None, repr=False)  # the model's identity, once computed

    @classmethod
    def make(cls, model: str, overrides: list[str] | None, device: str | None,
             argv: list[str] | None = None, quiet: bool = False, method: str | None = None) -> "Job":
        """Resolve the recipe (preset, then --set), pick the device, join a launched process group."""
        from ..backbones.loader import resolve_device
        from ..dist import WORLD, init, launched, local_device
        from ..presets import get_method, method_overrides
        from ..recipe import with_overrides

        if method is None:
            recipe = resolve_recipe(model, list(overrides or []))
        else:  # the preset's typed settings over the recipe, then --set
            recipe = with_overrides(get_method(method).apply(resolve_recipe(model)), list(overrides or []))
        dev = local_device(device or ("cuda" if launched() and _cuda() else None) or resolve_device(None))
        dev = resolve_device(dev)
        init(dev)
        rec = Recorder(recipe, dev, list(argv if argv is not None else sys.argv), str(model),
                       method_overrides(method) + list(overrides or []))
        return cls(recipe, dev, rec, quiet or not WORLD.main)

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

    def variant(self, method: str) -> "Job":
        """This job with a method preset applied over its recipe, sharing the loaded pipeline."""
        from ..presets import get_method, method_overrides

        m = get_method(method)
        rec = replace(self.recorder, recipe=m.apply(self.recipe), sets=self.recorder.sets + method_overrides(method))
        return replace(self, recipe=rec.recipe, loaded_pipeline=self.loaded, recorder=rec)

    def as_command(self, command: str, *args: str) -> "Job":
        """This job recording its runs with the command line that makes them alone (`Recorder.as_command`)."""
        rec = self.recorder.as_command(command, *args)
        return self if rec is self.recorder else replace(self, loaded_pipeline=self.loaded, recorder=rec)

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
        argv = self.recorder.argv
        command = f"ertacache {argv[1]}" if len(argv) > 1 else "ertacache"
        return {"recipe": self.recipe.name, "recipe_key": self.key, "model_id": model_id(self.recipe),
                "settings": self.run_settings().to_json(), "model": self.model_identity, "made_by": command,
                "profile_run": str(profile_run) if profile_run is not None else None}

    def calibration(self) -> Samples:
        """The recipe's calibration prompts x seeds (the prompt file read once per job)."""
        if self.calibration_set is None:
            self.calibration_set = Samples.grid(self.recipe.read_prompts("calibration"),
                                                list(self.recipe.calibration.seeds))
        return self.calibration_set

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

    # recording: the recorder's (kept here for the commands that record through their job)
    def rundir(self, command: str, resumable: bool = False, existing: str | Path | None = None,
               shared: bool = False) -> RunDir:
        return self.recorder.rundir(command, resumable, existing, shared)

    def finished(self, run: RunDir) -> Path:
        return self.recorder.finished(run)

    def start(self, run: RunDir, command: str, seeds: list[int]) -> None:
        self.recorder.start(run, command, seeds)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
