"""torchrun with 2 CPU processes (gloo): the same plans, coefficients and outputs as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SETS = ["--set", "sampling.steps=8", "--set", "eval.warmup=0", "--set", "calibration.seeds=[0]", "-q"]


def _run(root: Path, nproc: int, *args: str) -> Path:
    """Run `ertacache ARGS` (under torchrun when nproc > 1); returns the newest run directory it made."""
    env = dict(os.environ, ERTACACHE_RESULTS=str(root), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-port", str(29500 + os.getpid() % 1000)] if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "ertacli", *args, *SETS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = sorted((root / "tiny-flux-random").glob(f"{args[0]}-*"), key=lambda p: p.stat().st_mtime)
    return made[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for n in (1, 2):
        root = tmp_path_factory.mktemp(f"world{n}")
        search = _run(root, n, "search", "-m", "tiny-flux-random", "--lambda", "0.3,0.6")
        fit = _run(root, n, "fit", "-m", "tiny-flux-random", "--plan", str(search / "plans/lambda-0.6"),
                   "--adjust", "on", "--rectify", "on")
        gen = _run(root, n, "generate", "-m", "tiny-flux-random", "--plan", str(fit / "plan"),
                   "--prompt", "a seven", "--prompt", "a two", "--prompt", "a four", "--seed", "0")
        out[n] = {"search": search, "fit": fit, "generate": gen}
    return out


def test_search_same_plans(runs):
    for lam in ("0.3", "0.6"):
        plans = [json.loads((runs[n]["search"] / f"plans/lambda-{lam}/plan.json").read_text()) for n in (1, 2)]
        assert plans[0]["cached_steps"] == plans[1]["cached_steps"]
    assert any(plans[0]["cached_steps"].values())


def test_fit_coefficients_match(runs):
    fits = [json.loads((runs[n]["fit"] / "plan/plan.json").read_text()) for n in (1, 2)]
    a, b = fits[0]["rectify"]["scalar"]["cond"], fits[1]["rectify"]["scalar"]["cond"]
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6)
    assert fits[0]["adjusted_sigmas"] == pytest.approx(fits[1]["adjusted_sigmas"], abs=1e-6)


def test_generate_outputs_identical(runs):
    a, b = (load_file(str(runs[n]["generate"] / "latents.safetensors")) for n in (1, 2))
    assert a.keys() == b.keys() and len(a) == 3 and all(torch.equal(a[k], b[k]) for k in a)
    rows = (runs[2]["generate"] / "samples.csv").read_text().splitlines()
    assert len(rows) == 4
