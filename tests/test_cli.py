"""The command line end to end on random-weight tiny pipelines: the loop, plans, errors, reproduce."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LoadedSession, cli

FAST = ["--set", "sampling.steps=8", "--set", "eval.warmup=0",
        "--set", "eval.timing_rounds=1", "--set", "eval.timing_samples=1", "-q"]






def runs(results: Path, recipe: str, command: str) -> list[Path]:
    folder = results / recipe
    return sorted(folder.glob(f"{command}-*")) if folder.exists() else []


def test_help_does_not_import_torch():
    code = "import sys, ertacli.cli; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("args, expect", [
    (["search", "-m", "tiny-flux-random", "--lambda", "-0.1"], "--lambda must be >= 0"),
    (["search", "-m", "tiny-flx"], "did you mean tiny-flux"),
    (["generate", "-m", "tiny-flux-random", "--prompts", "missing.txt"], "prompt file not found: missing.txt"),
    (["profile", "-m", "tiny-flux-random", "--set", "sampling.steps=abc"], "field 'sampling.steps'"),
    (["validate", "bad.yaml"], "bad.yaml: invalid YAML at line"),
    (["search", "-m", "tiny-flux-random", "--lambda", "x"], "--lambda: 'x' is not a number"),
])
def test_bad_input_is_one_line_exit_2_no_run_dir(results, monkeypatch, capsys, tmp_path, args, expect):
    (tmp_path / "bad.yaml").write_text("name: x\nmodel: [\n")
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2
    assert expect in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not results.exists() or not any(results.rglob("*.json"))


@pytest.fixture()
def unknown_recipe(tmp_path):
    from ertacli.recipe import find_recipe

    p = tmp_path / "unknown.yaml"
    p.write_text(f"name: x\ninclude: {find_recipe('tiny-flux-random')}\nbogus: 1\n")
    return p


def test_unknown_key_names_field(results, monkeypatch, capsys, unknown_recipe):
    code, _, err = cli(monkeypatch, capsys, "validate", str(unknown_recipe))
    assert code == 2 and "unknown key 'bogus'" in err


def test_search_tiny_wan_two_plans_per_branch(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-wan-random", "--lambda", "0.05", "--lambda", "0.2",
                         *FAST)
    assert code == 0, err
    (run,) = runs(results, "tiny-wan-random", "search")
    plans = sorted(run.glob("plans/*/plan.json"))
    assert [p.parent.name for p in plans] == ["lambda-0.05", "lambda-0.2"]
    summary = (run / "summary.csv").read_text().splitlines()
    assert len(summary) == 3
    for p in plans:
        plan = json.loads(p.read_text())
        assert set(plan["cached_steps"]) == {"cond", "uncond"} == set(plan["branches"])
        assert all(0 < k < 7 for steps in plan["cached_steps"].values() for k in steps)
    big = json.loads(plans[1].read_text())
    assert sum(len(s) for s in big["cached_steps"].values()) >= sum(
        len(s) for s in json.loads(plans[0].read_text())["cached_steps"].values())
    assert (run / "recipe.yaml").is_file() and (run / "env.json").is_file() and (run / "command.txt").is_file()
    assert runs(results, "tiny-wan-random", "profile"), "search runs a profile first when none exists"


def _search_one(results, monkeypatch, capsys, lam: str, recipe="tiny-flux-random") -> Path:
    code, _, err = cli(monkeypatch, capsys, "search", "-m", recipe, "--lambda", lam, *FAST)
    assert code == 0, err
    return sorted(runs(results, recipe, "search")[-1].glob("plans/*"))[0]


def _latents(run: Path) -> dict:
    return load_file(str(run / "latents.safetensors"))


def test_lambda_zero_plan_equals_baseline(results, monkeypatch, capsys):
    plan = _search_one(results, monkeypatch, capsys, "0")
    assert json.loads((plan / "plan.json").read_text())["cached_steps"] == {"cond": []}
    args = ["--prompt", "a handwritten seven", "--seed", "3", *FAST]
    assert cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", *args)[0] == 0
    assert cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan", str(plan), *args)[0] == 0
    base, cached = runs(results, "tiny-flux-random", "generate")
    a, b = _latents(base), _latents(cached)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_fit_plan_round_trip_replays_fit_trajectory(results, monkeypatch, capsys, granularity):
    from ertacli.calibration.samples import Samples
    from ertacli.runs.job import Job
    from ertacli.calibration.passes import apply_controller
    from ertacli.plan import load_plan

    plan_dir = _search_one(results, monkeypatch, capsys, "0.5")
    sets = [*FAST, "--set", f"fit.granularity={granularity}"]
    code, out, err = cli(monkeypatch, capsys, "fit", "-m", "tiny-flux-random", "--plan", str(plan_dir),
                         "--adjust", "on", "--rectify", "on", *sets)
    assert code == 0, err
    (fit_run,) = runs(results, "tiny-flux-random", "fit")
    plan = load_plan(fit_run)
    folder = plan.folder
    assert plan.rectify["granularity"] == granularity and (folder / "rectify.safetensors").is_file()
    assert plan.adjusted_sigmas[0] == plan.base_sigmas[0] and plan.adjusted_sigmas[-1] == 0.0
    job = Job.make("tiny-flux-random", [s for s in sets if s.startswith(("model", "sampling", "eval", "fit"))], "cpu")
    fit_set = Samples(plan.fit["fit_samples"]["prompts"], plan.fit["fit_samples"]["seeds"])
    ctl = apply_controller(plan, job.loaded.backbone.channel_dim, plan.coeffs(), plan.adjusted_sigmas)
    with LoadedSession(job.loaded, ctl) as session:
        replay = session.run_batch(job.recipe, fit_set.prompts, fit_set.seeds)
    assert torch.equal(replay.latents, load_file(str(fit_run / "fit_latents.safetensors"))["latents"])


def test_plan_transferred_to_other_steps_refused_for_other_recipe(results, monkeypatch, capsys):
    plan = _search_one(results, monkeypatch, capsys, "0.5")
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan", str(plan),
                       *FAST, "--set", "sampling.steps=6")
    assert code == 0, err  # another step count: the plan runs transferred (ertacli.transfer)
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-wan-random", "--plan", str(plan), *FAST)
    assert code == 2 and "model class FluxTransformer2DModel, this run has WanTransformer3DModel" in err
    assert "re-run calibration" in err
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan", str(plan), *FAST,
                       "--set", "sampling.height=24")
    assert code == 2 and "re-run" in err


def test_eval_and_reproduce_exact(results, monkeypatch, capsys):
    plan = _search_one(results, monkeypatch, capsys, "0.5")
    code, _, err = cli(monkeypatch, capsys, "eval", "-m", "tiny-flux-random", "--plan", str(plan), "--prompt", "a seven",
                       "--prompt", "a two", *FAST)
    assert code == 0, err
    (ev,) = runs(results, "tiny-flux-random", "eval")
    summary = json.loads((ev / "eval.json").read_text())
    n_cached = sum(len(s) for s in json.loads((plan / "plan.json").read_text())["cached_steps"].values())
    assert summary["nfe"] == 8 - n_cached and summary["baseline_nfe"] == 8
    assert summary["samples"] == 2 and summary["psnr"] > 10 and 0 < summary["ssim"] <= 1
    cached = [g for g in runs(results, "tiny-flux-random", "generate")
              if json.loads((g / "generate.json").read_text())["kind"] == "ertacache"][0]
    code, out, err = cli(monkeypatch, capsys, "reproduce", str(cached))
    assert code == 0, err + out
    assert "exact match" in out


def test_demo_table_and_ablation(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "demo", "-m", "tiny-flux-random", "--lambda", "0.3,0.8", *FAST)
    assert code == 0, err
    (demo,) = runs(results, "tiny-flux-random", "demo")
    import pandas as pd

    table = pd.read_csv(demo / "demo.csv")
    base, table = table.iloc[0], table.iloc[1:]
    assert base["method"] == "uncached baseline" and base["nfe"] == 8 and base["ssim"] == 1.0
    assert list(table["lambda"]) == [0.3, 0.8]
    assert {"cached_steps", "nfe", "speedup", "psnr", "ssim"} <= set(table.columns)
    assert (table["nfe"] == 8 - table["cached_steps"]).all()
    abl = pd.read_csv(demo / "ablation.csv")
    assert list(abl["method"]) == ["uniform cache", "offline policy", "+ timestep adjustment", "+ error rectification"]
    assert abl["cached_steps"].nunique() == 1 and abl["nfe"].nunique() == 1
    assert "ERTACache on tiny-flux-random" in out and "run directory" in out


def test_sweep_compare_writes_table_and_plots(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "sweep", "-m", "tiny-flux-random", "--lambda", "0.5", "--compare",
                         "--pick-psnr", "20", *FAST)
    assert code == 0, err
    (run,) = runs(results, "tiny-flux-random", "sweep")
    import pandas as pd

    df = pd.read_csv(run / "sweep.csv")
    methods = list(df["method"])
    assert methods[0] == "ertacache" and "uniform cache" in methods and "FirstBlockCache" in methods
    ours = df[df["method"] == "ertacache"].iloc[0]
    uni = df[df["method"] == "uniform cache"].iloc[0]
    assert uni["nfe"] == ours["nfe"]
    ran = df[df["nfe"].notna()]
    assert ran[["speedup", "psnr", "ssim"]].notna().all().all()
    for png in ("pareto.png", "error_profile.png"):
        assert (run / png).stat().st_size > 10_000
    choice = json.loads((run / "sweep.json").read_text())["choice"]
    assert choice["lambda"] == 0.5 and "PSNR" in choice["reason"]


def test_quality_gate_fails_and_lists_samples(results, monkeypatch, capsys):
    plan = _search_one(results, monkeypatch, capsys, "0.8")
    args = ["eval", "-m", "tiny-flux-random", "--plan", str(plan), "--prompt", "a seven", "--prompt", "a two", *FAST]
    code, out, err = cli(monkeypatch, capsys, *args, "--min-psnr", "1000")
    assert code == 1
    assert "quality gate failed" in err and "sample 0" in err and "sample 1" in err
    code, out, err = cli(monkeypatch, capsys, *args, "--min-psnr", "1")
    assert code == 0, err


def test_missing_metric_weights_reported_not_scored(results, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.delenv("ERTACACHE_LPIPS_BACKBONE", raising=False)
    plan = _search_one(results, monkeypatch, capsys, "0.5")
    code, out, err = cli(monkeypatch, capsys, "eval", "-m", "tiny-flux-random", "--plan", str(plan), "--prompt",
                         "a seven", *FAST, "--set", "eval.metrics=[psnr, lpips]")
    assert code == 0, err
    (ev,) = runs(results, "tiny-flux-random", "eval")
    summary = json.loads((ev / "eval.json").read_text())
    assert summary["lpips"].startswith("missing:") and "alexnet-owt-7be5be79.pth" in summary["lpips"]
    assert isinstance(summary["psnr"], float)


def test_runs_made_inside_another_command_reproduce_on_their_own(results, monkeypatch, capsys):
    """A profile made by `search` and a TeaCache fit made by a sweep's peers record their own command line."""
    from ertacli.commands.eval import save_uniform
    from ertacli.commands.teacache_fit import find_or_make_teacache
    from ertacli.plan import load_plan
    from ertacli.runs.job import Job

    plan = _search_one(results, monkeypatch, capsys, "0.5")
    (profile,) = runs(results, "tiny-flux-random", "profile")
    assert json.loads((profile / "argv.json").read_text())["argv"][1:4] == ["profile", "--model", "tiny-flux-random"]
    sets = ["sampling.steps=4", "calibration.seeds=[0]"]
    job = Job.make("tiny-flux-random", sets, "cpu", argv=["ertacache", "sweep", "-m", "tiny-flux-random"], quiet=True)
    fit, path = find_or_make_teacache(job)
    argv = json.loads((path.parent / "argv.json").read_text())["argv"]
    assert argv[1:] == ["teacache-fit", "--model", "tiny-flux-random", "--set", sets[0], "--set", sets[1]]
    code, out, err = cli(monkeypatch, capsys, "reproduce", str(path.parent))
    assert code == 0 and "exact match" in out, err + out
    # a run with no command of its own (the uniform cache a peer comparison writes) says so, in one line
    uniform = save_uniform(job, load_plan(plan)).parent
    code, out, err = cli(monkeypatch, capsys, "reproduce", str(uniform))
    assert code == 2 and "made inside `ertacache sweep`" in err and len(err.strip().splitlines()) == 1
