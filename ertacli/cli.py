"""The `ertacache` command line: thin Typer commands that parse, call one core function and render."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import UserError

app = typer.Typer(name="ertacache", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Calibrated feature caching (ERTACache) for diffusion transformers: "
                       "profile -> search -> fit -> generate -> eval.")
console = Console()
err_console = Console(stderr=True)

ModelOpt = typer.Option("tiny-flux", "--model", "-m", help="Recipe name (see `ertacache recipes`) or path to a recipe file.")
MethodOpt = typer.Option(None, "--method", help="Method preset over the recipe: ertacache (the paper), ertacache-x1, "
                         "ertacache-x2, ertacache-x2p, auto (see `ertacache recipes --methods`).")
AutoTrialsOpt = typer.Option(None, "--auto-trials", help="--method auto: candidates scored at most (default: recipe).")


def _auto_sets(trials: Optional[int]) -> list[str]:
    """--auto-trials N as a recipe override (N >= 1)."""
    if trials is None:
        return []
    if trials < 1:
        raise UserError(f"--auto-trials must be >= 1, got {trials}")
    return [f"search.auto_trials={trials}"]
SetOpt = typer.Option(None, "--set", help="Override a recipe field: --set sampling.steps=30 (repeatable).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when available, else CPU).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
CompileOpt = typer.Option(False, "--compile", help="torch.compile each transformer block once (first call compiles).")


def _job(model: str, sets: Optional[List[str]], device: Optional[str], quiet: bool = False, compile_: bool = False,
         method: Optional[str] = None):
    from .runs.job import Job

    job = Job.make(model, sets, device, quiet=quiet, method=method)
    job.compile = compile_  # every session on this pipeline runs its blocks compiled (baseline included)
    return job


SHORT = {"cached_steps": "cached", "baseline_nfe": "nfe0", "ideal_speedup": "ideal", "predicted_speedup": "pred.",
         "holdout_mse": "heldout mse", "gain_vs_plain": "gain"}


def _show(df_or_rows, title: str, path: Optional[Path] = None) -> None:
    import pandas as pd

    from .runs.tables import rich_table, split_missing

    df = df_or_rows if isinstance(df_or_rows, pd.DataFrame) else pd.DataFrame(df_or_rows)
    df, notes = split_missing(df)
    console.print(rich_table(df.rename(columns=SHORT), title))
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)
    if path is not None:
        console.print(f"[bold]run directory:[/bold] {path}")


def _lambdas(values: Optional[List[str]]) -> list[float]:
    """--lambda is repeatable and takes comma lists: --lambda 0.05 --lambda 0.1,0.2."""
    out = []
    for v in values or []:
        for part in str(v).split(","):
            try:
                out.append(float(part))
            except ValueError:
                raise UserError(f"--lambda: {part!r} is not a number (use --lambda 0.08 or --lambda 0.05,0.1)")
    return out


@app.command("recipes")
def recipes_cmd(methods: bool = typer.Option(False, "--methods", help="List the --method presets instead.")) -> None:
    """List the recipes: name, pipeline class, steps, size/frames, branches, method, and where each was found."""
    from .assets import available_recipes
    from .backbones import get_backbone
    from .presets import METHODS, preset_of
    from .recipe import list_recipes

    if methods:
        _show([{"method": k, "what": m.summary, "overrides": " ".join(m.overrides)} for k, m in METHODS.items()],
              "--method presets (applied over the recipe, under --set)")
        return
    rows = []
    origin = {found.name: found.origin for found in available_recipes()}
    for name, r in list_recipes():
        if isinstance(r, str):
            rows.append({"name": name, "pipeline": "-", "steps": None, "size": "-", "branches": f"invalid: {r}",
                         "from": origin.get(name, "-")})
            continue
        s = r.sampling
        size = f"{s.width}x{s.height}" + (f"x{s.frames}f" if s.frames else "")
        rows.append({"name": name, "pipeline": r.model.pipeline, "steps": s.steps, "size": size,
                     "branches": ",".join(get_backbone(r.model.pipeline).branches), "method": preset_of(r),
                     "source": r.model.path or r.model.source, "from": origin.get(name, "-")})
    _show(rows, "recipes (lookup order: ./recipes, $ERTACACHE_RECIPES, bundled)")


@app.command("validate")
def validate_cmd(recipe: str = typer.Argument(..., help="Recipe name or path."), sets: Optional[List[str]] = SetOpt) -> None:
    """Check one recipe: schema, includes, backbone, prompt files."""
    from .backbones import get_backbone
    from .recipe import resolve_recipe

    r = resolve_recipe(recipe, sets or [])
    get_backbone(r.model.pipeline)
    n_cal, n_eval = len(r.read_prompts("calibration")), len(r.read_prompts("eval"))
    console.print(f"[green]ok[/green] {r.name}: {r.model.pipeline}, {r.sampling.steps} steps, "
                  f"{n_cal} calibration prompts x {len(r.calibration.seeds)} seeds, {n_eval} eval prompts")


@app.command("profile")
def profile_cmd(model: str = ModelOpt, sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                save_tensors: bool = typer.Option(False, "--save-tensors", help="Also keep full R_k and v_k tensors."),
                quiet: bool = QuietOpt) -> None:
    """Uncached calibration runs; per-step, per-branch residual statistics and baseline outputs."""
    import pandas as pd

    from .commands.profile import run_profile

    path = run_profile(_job(model, sets, device, quiet), keep_tensors=save_tensors)
    _show(pd.read_csv(path / "stats.csv").round(4), "profile: per-step statistics", path)


@app.command("search")
def search_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = typer.Option(
                   None, "--lambda", "-l", help="Threshold(s): repeat or comma list (default: the recipe's)."),
               profile: Optional[str] = typer.Option(None, "--profile", help="Profile run directory to use."),
               cached_steps: Optional[int] = typer.Option(None, "--cached-steps", help="Target: smallest lambda caching >= N steps."),
               target_speedup: Optional[float] = typer.Option(None, "--target-speedup", help="Target: smallest lambda predicting >= X."),
               predictor: Optional[str] = typer.Option(None, "--predictor", help="reuse | extrapolate (default: recipe)."),
               order: Optional[int] = typer.Option(None, "--order", help="Extrapolation order 1 | 2 (default: recipe)."),
               nfe: Optional[int] = typer.Option(None, "--nfe", help="Target: transformer calls per sample (sets --cached-steps)."),
               method: Optional[str] = MethodOpt, auto_trials: Optional[int] = AutoTrialsOpt,
               sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Threshold policy search: one plan per lambda and a summary table (--method auto: the configuration search)."""
    from .commands.search import run_search

    sets = list(sets or []) + ([f"cache.predictor={predictor}"] if predictor else []) \
        + ([f"cache.order={order}"] if order else []) + _auto_sets(auto_trials)
    job = _job(model, sets, device, quiet, method=method)
    lams = _lambdas(lambdas) or list(job.recipe.search.lambdas)
    path, df = run_search(job, lams, profile, cached_steps, target_speedup, nfe)
    _show(df.drop(columns=["cached"]), "search: one plan per lambda", path)


@app.command("fit")
def fit_cmd(plan: str = typer.Option(..., "--plan", "-p", help="Plan folder (or a search run holding one plan)."),
            model: str = ModelOpt,
            adjust: Optional[str] = typer.Option(None, "--adjust", help="auto | on | off (default: recipe)."),
            rectify: Optional[str] = typer.Option(None, "--rectify", help="auto | on | off (default: recipe)."),
            gain: Optional[str] = typer.Option(None, "--gain", help="Fitted predictor gain: auto | on | off."),
            optimize_placement: bool = typer.Option(False, "--optimize-placement", help="Greedy ±1 moves of computed steps."),
            placement_trials: Optional[int] = typer.Option(None, "--placement-trials", help="Most placement trials."),
            method: Optional[str] = MethodOpt,
            sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Timestep adjustment and error rectification for a plan, validated on held-out prompts."""
    from .commands.fit import run_fit

    path, final = run_fit(_job(model, sets, device, quiet, method=method), plan, adjust, rectify, gain,
                          optimize_placement or None, placement_trials)
    dec = final.fit["decision"]
    rows = [{"adjust": c["adjust"], "rectify": c["rectify"], "gain": c.get("gain", False),
             "holdout_mse": c["holdout_mse"], "gain_vs_plain": c["gain_vs_plain"],
             "chosen": (c["adjust"], c["rectify"], c.get("gain", False)) == (dec["adjust"], dec["rectify"],
                                                                             dec.get("gain", False))}
            for c in final.fit["candidates"]]
    if final.placement:
        pl = final.placement
        console.print(f"placement: calibration L1 {pl['before']:.6g} -> {pl['after']:.6g} in {pl['trials']} trials")
    for c in final.fit["candidates"]:  # every adjusting candidate's phi, chosen or not
        ph = c.get("phi_summary")
        if ph:
            console.print(f"phi (adjust, rectify={c['rectify']}, gain={c.get('gain', False)}) over {ph['cached']} "
                          f"cached steps: {ph['zero']} at 0, {ph['partial']} in (0,1), {ph['one']} at 1; "
                          f"min/median/max {ph['min']}/{ph['median']}/{ph['max']}")
    _show(rows, "fit: candidates on held-out prompts (lower MSE wins)", path)


@app.command("generate")
def generate_cmd(model: str = ModelOpt, plan: Optional[str] = typer.Option(None, "--plan", "-p", help="Plan folder; omit for the uncached baseline."),
                 prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="Prompt (repeatable)."),
                 prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt file, one per line."),
                 seed: Optional[List[int]] = typer.Option(None, "--seed", help="Seed (repeatable; default: recipe eval seeds)."),
                 resume: Optional[str] = typer.Option(None, "--resume", help="Finish an interrupted generate run directory."),
                 sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
                 compile_: bool = CompileOpt) -> None:
    """Run the pipeline uncached or with a plan; saves media, latents, NFE and time per sample."""
    import pandas as pd

    from .commands.generate import resume_inputs, run_generate

    job = _job(model, sets, device, quiet, compile_)
    if resume:
        samples, plan = resume_inputs(job, resume)
        path = run_generate(job, samples, plan, resume=resume)
    else:
        path = run_generate(job, job.eval_samples(prompt, prompts, seed), plan)
    df = pd.read_csv(path / "samples.csv")
    _show(df[["index", "prompt", "seed", "nfe", "seconds", "file"]], "generate", path)


@app.command("eval")
def eval_cmd(model: str = ModelOpt, plan: Optional[str] = typer.Option(None, "--plan", "-p", help="Plan to generate with and evaluate."),
             run: Optional[str] = typer.Option(None, "--run", help="An existing generate run to evaluate."),
             prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="Prompt (repeatable)."),
             prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt file, one per line."),
             seed: Optional[List[int]] = typer.Option(None, "--seed", help="Seed (repeatable)."),
             compare: bool = typer.Option(False, "--compare", help="Also run diffusers' built-in caches at this NFE."),
             min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Quality gate: fail if mean PSNR is lower."),
             max_lpips: Optional[float] = typer.Option(None, "--max-lpips", help="Quality gate: fail if mean LPIPS is higher."),
             vbench: bool = typer.Option(False, "--vbench", help="VBench's standard dimensions (pip install 'ertacache[vbench]')."),
             sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
             compile_: bool = CompileOpt) -> None:
    """Quality (PSNR, SSIM, ...) and measured speedup against the uncached baseline; optional quality gate."""
    from .commands.eval import quality_gate, run_eval

    job = _job(model, sets, device, quiet, compile_)
    path, summary, peers = run_eval(job, job.eval_samples(prompt, prompts, seed), plan, run, with_peers=compare, vbench=vbench)
    _show([{"quantity": k, "value": v} for k, v in summary.items()], "eval: cached vs uncached baseline")
    if peers:
        _show([{k: v for k, v in r.items() if k != "run"} for r in peers], "peers at the plan's NFE")
    console.print(f"[bold]run directory:[/bold] {path}")
    failures = quality_gate(path, min_psnr, max_lpips)
    if failures:
        err_console.print(f"[bold red]quality gate failed:[/bold red] {failures[0]}")
        for line in failures[1:]:
            err_console.print(f"  {line}")
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = typer.Option(None, "--lambda", "-l"),
              nfe: Optional[List[str]] = typer.Option(None, "--nfe", help="Matched-NFE targets (default: the recipe's search.nfe)."),
              methods: Optional[str] = typer.Option(None, "--methods", help="Presets compared at each --nfe (default: all)."),
              compare: bool = typer.Option(False, "--compare", help="Peers (best of their grid) and a uniform cache too."),
              target_speedup: Optional[float] = typer.Option(None, "--target-speedup", help="Pick the lambda reaching X on calibration."),
              min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Pick the fastest lambda with PSNR >= Y on calibration."),
              samples: Optional[int] = typer.Option(None, "--samples", help="Evaluate on the first N eval prompts x seeds."),
              method: Optional[str] = MethodOpt, auto_trials: Optional[int] = AutoTrialsOpt,
              sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Lambda grid, or every method and peer at matched NFEs, through search -> fit -> generate -> eval: table, plots."""
    from .commands.sweep import run_sweep
    from .presets import method_overrides

    job = _job(model, list(sets or []) + _auto_sets(auto_trials), device, quiet, method=method)
    names = [m.strip() for m in methods.split(",")] if methods else None
    for name in names or []:
        method_overrides(name)
    nfes = [int(x) for x in _lambdas(nfe)] if nfe else (
        None if lambdas or target_speedup is not None or min_psnr is not None else list(job.recipe.search.nfe))
    path, df, picked = run_sweep(job, _lambdas(lambdas) or list(job.recipe.search.lambdas), compare,
                                 target_speedup, min_psnr, nfes, names, samples)
    cols = ["method", "target_nfe", "lambda", "setting", "nfe", "ideal_speedup", "speedup", *job.recipe.eval.metrics,
            "calib_psnr", "best_calibrated", "note"]
    _show(df[[c for c in cols if c in df.columns]], f"sweep on {job.recipe.name} (full table: sweep.csv)")
    if picked:
        console.print(f"[bold]chosen lambda:[/bold] {picked['lambda']} ({picked['reason']})")
    console.print(f"[bold]run directory:[/bold] {path}  (sweep.csv, pareto.png, error_profile.png)")


@app.command("reproduce")
def reproduce_cmd(run_dir: str = typer.Argument(..., help="A run directory to re-run and compare.")) -> None:
    """Re-run a run directory's exact command and report whether the outputs match."""
    from .commands.reproduce import run_reproduce

    new, df, ok = run_reproduce(Path(run_dir))
    _show(df, "reproduce: " + ("exact match" if ok else "MISMATCH"), new)
    if not ok:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = typer.Option(None, "--lambda", "-l"),
             ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="Add the paper's Table 3 rows."),
             samples: int = typer.Option(8, "--samples", help="Evaluate on the first N eval prompts x seeds."),
             method: Optional[str] = MethodOpt,
             sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """The whole loop on one recipe: profile -> search -> fit -> generate -> eval, one table."""
    from .commands.demo import run_demo

    job = _job(model, sets, device, quiet, method=method)
    path, df, abl = run_demo(job, _lambdas(lambdas) or list(job.recipe.search.lambdas), ablation, samples)
    _show(df, f"ERTACache on {job.recipe.name}: validated fit per lambda vs uncached")
    if len(abl):
        _show(abl, "ablation (paper Table 3) at one lambda, same cached steps per row")
    console.print(f"[bold]run directory:[/bold] {path}")


@app.command("estimate")
def estimate_cmd(prompts: int = typer.Option(..., "--prompts", help="Number of eval prompts."),
                 seeds: int = typer.Option(5, "--seeds", help="Videos per prompt."),
                 baseline_seconds: float = typer.Option(..., "--baseline-seconds", help="Measured uncached latency per video."),
                 cached_seconds: float = typer.Option(..., "--cached-seconds", help="Measured cached latency per video."),
                 gpus: str = typer.Option("1,8,64", "--gpus", help="GPU counts, comma list."),
                 calibration_prompts: int = typer.Option(0, "--calibration-prompts"),
                 calibration_passes: int = typer.Option(0, "--calibration-passes", help="profile + search + fit passes.")) -> None:
    """Expected wall time of a data-parallel eval (baseline + cached) on N GPUs, from measured latencies."""
    from .commands.estimate import estimate_rows

    try:
        counts = [int(g) for g in gpus.split(",")]
    except ValueError:
        raise UserError(f"--gpus: {gpus!r} is not a comma list of integers (e.g. 1,8,64)")
    _show(estimate_rows(prompts, seeds, baseline_seconds, cached_seconds, counts, calibration_passes,
                        calibration_prompts), "estimated wall time (hours), perfect data parallelism over prompts")


@app.command("bench")
def bench_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = typer.Option(None, "--lambda", "-l"),
              samples: Optional[int] = typer.Option(None, "--samples", help="Evaluate on the first N eval samples."),
              ablation: bool = typer.Option(False, "--ablation/--no-ablation", help="Add the paper's Table 3 rows."),
              method: str = typer.Option("ertacache", "--method", help="Method preset (default: the paper's)."),
              sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
              compile_: bool = CompileOpt) -> None:
    """The paper's setting end to end; stops at once, naming what is missing, without a GPU or the weights."""
    from .commands.bench import bench_job, run_bench

    job = bench_job(model, sets, device, quiet, method)
    job.compile = compile_
    path, df = run_bench(job, _lambdas(lambdas) or list(job.recipe.search.lambdas), samples, ablation)
    _show(df, f"bench: ERTACache on {job.recipe.name} (bench.csv, resources.json)", path)


@app.command("overhead")
def overhead_cmd(model: str = ModelOpt,
                 ratios: Optional[List[float]] = typer.Option(None, "--ratio", "-r",
                                                              help="Share of steps cached, evenly spaced (repeatable; default 0.5)."),
                 predictors: Optional[List[str]] = typer.Option(None, "--predictor",
                                                                help="reuse, extrapolate-1, extrapolate-2 (repeatable; default all)."),
                 sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
                 compile_: bool = CompileOpt) -> None:
    """Cached vs uncached wall time in one run, against the ideal NFE ratio; no calibration, any weights."""
    from .commands.bench import check_device
    from .commands.overhead import PREDICTORS, run_overhead

    check_device(device)
    job = _job(model, sets, device, quiet, compile_)
    path, df = run_overhead(job, list(ratios or [0.5]), list(predictors or PREDICTORS))
    _show(df.round(3), f"overhead: {job.recipe.name} on {job.device} (overhead.csv)", path)


@app.command("export")
def export_cmd(plan: str = typer.Argument(..., help="Plan folder (or a search/fit run holding one plan)."),
               to: str = typer.Option("cache-dit", "--to", help="Target format: cache-dit (steps_computation_mask)."),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: PLAN/<to>.json)."),
               branch: Optional[str] = typer.Option(None, "--branch", help="Export this branch's cached steps "
                                                    "(default: steps every branch caches).")) -> None:
    """Write a plan's computed-step mask for another caching library (what carries over is listed in the file)."""
    from .export import read_export, write_export
    from .plan import load_plan

    loaded = load_plan(plan)
    path = write_export(loaded, out or loaded.folder / f"{to}.json", to=to, branch=branch, source=loaded.folder)
    data = read_export(path)
    mask = "".join(str(int(v)) for v in data["steps_computation_mask"])
    console.print(f"steps_computation_mask ({data['num_inference_steps']} steps, 1 = compute): {mask}")
    for line in data["does_not_carry_over"]:
        console.print(f"[yellow]not carried over:[/yellow] {line}", highlight=False)
    console.print(f"[bold]wrote:[/bold] {path}")


def main() -> None:
    """Console entry point: user errors print one line and exit 2."""
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
