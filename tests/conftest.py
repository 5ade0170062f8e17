"""Shared fixtures for the engine tests: tiny pipelines loaded once per session (CPU, a few seconds)."""

from __future__ import annotations

import os

import pytest
import torch

# Tiny models: one intra-op thread is much faster than several, and far more robust on a busy 2-core box
# (thread contention made a 0.1 s run take 4 s). ERTACACHE_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("ERTACACHE_TEST_THREADS", "1")))

STEPS = 6
PROMPTS = ["a red circle", "two blue squares"]
SEEDS = [0, 1]


def _load(name: str, steps: int = STEPS):
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    recipe = resolve_recipe(name, [f"sampling.steps={steps}"])
    return load_pipeline(recipe, "cpu"), recipe


@pytest.fixture(scope="session")
def tiny_flux():
    """(Loaded, Recipe) for tiny-flux at STEPS sampling steps."""
    return _load("tiny-flux-random")


@pytest.fixture(scope="session")
def tiny_wan():
    """(Loaded, Recipe) for tiny-wan (branches cond/uncond) at STEPS sampling steps."""
    return _load("tiny-wan-random")


def run_batch(loaded, recipe, prompts, seeds):
    """One uncached call of a recipe's loaded pipeline (the Sampler a recipe describes)."""
    from ertacli.backbones.sampler import Sampler

    return Sampler.from_recipe(loaded, recipe).run(prompts, seeds)


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `ertacache ARGS` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from ertacli.cli import main

    monkeypatch.setattr(sys, "argv", ["ertacache", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def results(tmp_path, monkeypatch):
    """Run directories under a temporary results/ (and the working directory there)."""
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"


class LoadedSession:
    """A controller's Session on a loaded recipe pipeline, with `run_batch(recipe, prompts, seeds)` for tests."""

    def __init__(self, loaded, controller, micro_batch: int = 0):
        from ertacli.engine import Session

        self.loaded, self.controller = loaded, controller
        self.session = Session(loaded.pipe, loaded.backbone, controller, micro_batch, loaded.compile)

    def __enter__(self) -> "LoadedSession":
        self.session.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.session.__exit__(*exc)

    def run_batch(self, recipe, prompts, seeds):
        from ertacli.backbones.sampler import Sampler

        self.session.fresh()
        return Sampler.from_recipe(self.loaded, recipe).run(prompts, seeds)
