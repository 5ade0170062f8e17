"""The `ertacache` command line: thin Typer commands that parse, call one core function and render."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .cli_options import (SAMPLES_HELP, AutoTrialsOpt, CompareOpt, CompileOpt, DeviceOpt, TrustAdapterOpt, LambdaOpt, MethodOpt,
                          MethodsOpt, ModelOpt, NfeOpt, PlanOpt, PredictorOpt, PredictorsOpt, PromptOpt, PromptsOpt,
                          QuietOpt, RequiredPlanOpt, SamplesOpt, SeedOpt, SetOpt, ablation_opt, auto_sets, deprecated,
                          integers, lambdas as parse_lambdas, names as parse_names, predictor_overrides, retired,
                          retired_opt)
from .cli_app import app, finish, make_job, say, show
from .errors import UserError


@app.command("profile")
def profile_cmd(model: str = ModelOpt, sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                save_tensors: bool = typer.Option(False, "--save-tensors", help="Also keep full R_k and v_k tensors."),
                quiet: bool = QuietOpt) -> None:
    """Uncached calibration runs; per-step, per-branch residual statistics and baseline outputs."""
    import pandas as pd

    from .commands.profile import memory_estimate, run_profile

    job = make_job(model, sets, device, quiet)
    estimate = memory_estimate(job)
    if estimate:
        say(estimate, stderr=True)
    path = run_profile(job, keep_tensors=save_tensors)
    stats = pd.read_csv(path / "stats.csv")
    show(stats.round(4), "profile: per-step statistics")
    finish(f"profiled {len(job.calibration())} calibration samples x {job.recipe.sampling.steps} steps, "
            f"branches {', '.join(stats['branch'].unique())}", path)


@app.command("teacache-fit")
def teacache_fit_cmd(model: str = ModelOpt, sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                     quiet: bool = QuietOpt) -> None:
    """TeaCache's rescaling polynomial (degree 4, least squares) fitted on the calibration samples -> teacache.json."""
    import json

    from .commands.teacache_fit import run_teacache_fit

    path = run_teacache_fit(make_job(model, sets, device, quiet))
    fit = json.loads(path.read_text())
    show([{"degree": fit["degree"], "r2": round(fit["r2"], 4), "rms_residual": fit["rms_residual"],
            "points": fit["points"], "input": fit["input"],
            "coefficients": ", ".join(f"{c:.6g}" for c in fit["coefficients"])}], "TeaCache fit")
    finish(f"TeaCache polynomial of degree {fit['degree']} on {fit['points']} points, R2 {fit['r2']:.4f}", path.parent)


@app.command("search")
def search_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = LambdaOpt,
               profile: Optional[str] = typer.Option(None, "--profile", help="Profile run directory to use."),
               cached_steps: Optional[int] = typer.Option(None, "--cached-steps", help="Target: smallest lambda caching >= N calls."),
               target_speedup: Optional[float] = typer.Option(None, "--target-speedup",
                                                              help="Target: smallest lambda whose predicted speedup (NFE ratio) is >= X."),
               predictor: Optional[str] = PredictorOpt,
               order: Optional[int] = typer.Option(None, "--order", hidden=True, help="Deprecated: use --predictor extrapolate-N."),
               target_nfe: Optional[int] = typer.Option(None, "--target-nfe", help="Target: transformer calls per "
                                                        "sample (sets --cached-steps)."),
               old_nfe: Optional[List[str]] = typer.Option(None, "--nfe", hidden=True, help="Deprecated: --target-nfe."),
               method: Optional[str] = MethodOpt, auto_trials: Optional[int] = AutoTrialsOpt,
               sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Threshold policy search: one plan per lambda and a summary table (--method auto: the configuration search)."""
    from .commands.search import run_search
    from .runs.headlines import num

    sets = list(sets or []) + predictor_overrides(predictor, order) + auto_sets(auto_trials)
    target_nfe = one_nfe_target(target_nfe, old_nfe)
    job = make_job(model, sets, device, quiet, method=method)
    path, df = run_search(job, parse_lambdas(lambdas) or list(job.recipe.search.lambdas), profile, cached_steps,
                          target_speedup, target_nfe)
    show(df.drop(columns=["cached"]), "search: one plan per lambda")
    finish("; ".join(f"lambda {num(r['lambda'])}: {r['cached_steps']} cached, NFE {r['nfe']}, predicted "
                      f"{r['predicted_speedup']:.2f}x" for r in df.to_dict("records")), path)


def one_nfe_target(target_nfe: Optional[int], old_nfe: Optional[List[str]]) -> Optional[int]:
    """--target-nfe, or the deprecated `search --nfe` (one value: sweep's --nfe compares several)."""
    if not old_nfe:
        return target_nfe
    deprecated("search", "--nfe")
    targets = integers(old_nfe, "--nfe")
    if len(targets) > 1 or target_nfe is not None:
        raise UserError("search takes one NFE target: --target-nfe N (`sweep --nfe` compares several)")
    return targets[0]


@app.command("fit")
def fit_cmd(plan: str = RequiredPlanOpt,
            model: str = ModelOpt,
            adjust: Optional[str] = typer.Option(None, "--adjust", help="Timestep adjustment: auto | on | off (default: recipe)."),
            rectify: Optional[str] = typer.Option(None, "--rectify", help="Error rectification: auto | on | off (default: recipe)."),
            gain: Optional[str] = typer.Option(None, "--gain", help="Fitted predictor gain: auto | on | off (default: recipe)."),
            optimize_placement: bool = typer.Option(False, "--optimize-placement", help="Greedy ±1 moves of computed steps."),
            placement_trials: Optional[int] = typer.Option(None, "--placement-trials", help="Most placement trials."),
            method: Optional[str] = MethodOpt,
            sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Timestep adjustment and error rectification for a plan, validated on held-out prompts."""
    from .commands.fit import run_fit
    from .runs.headlines import num

    path, final = run_fit(make_job(model, sets, device, quiet, method=method), plan, adjust, rectify, gain,
                          optimize_placement or None, placement_trials)
    dec = final.fit["decision"]
    key = lambda c: (c["adjust"], c["rectify"], c.get("gain", False))
    rows = [{"adjust": c["adjust"], "rectify": c["rectify"], "gain": c.get("gain", False),
             "holdout_mse": c["holdout_mse"], "gain_vs_plain": c["gain_vs_plain"],
             "phi_zero": (c.get("phi_summary") or {}).get("zero"), "chosen": key(c) == key(dec)}
            for c in final.fit["candidates"]]
    if final.placement:
        pl = final.placement
        say(f"placement: calibration L1 {pl['before']:.6g} -> {pl['after']:.6g} in {pl['trials']} trials")
    for c in final.fit["candidates"]:  # every adjusting candidate's phi, chosen or not
        ph = c.get("phi_summary")
        if ph:
            say(f"phi (adjust, rectify={c['rectify']}, gain={c.get('gain', False)}) over {ph['cached']} cached steps: "
                 f"{ph['zero']} at 0, {ph['partial']} in (0,1), {ph['one']} at 1; min/median/max "
                 f"{ph['min']}/{ph['median']}/{ph['max']}")
    show(rows, "fit: candidates on held-out prompts (lower MSE wins)")
    chosen = next(r for r in rows if r["chosen"])
    finish(f"kept adjust={dec['adjust']} rectify={dec['rectify']} gain={dec.get('gain', False)}; held-out MSE "
            f"{num(chosen['holdout_mse'])}", path)


@app.command("generate")
def generate_cmd(ctx: typer.Context, model: str = ModelOpt, plan: Optional[str] = PlanOpt,
                 prompt: Optional[List[str]] = PromptOpt, prompts: Optional[str] = PromptsOpt,
                 seed: Optional[List[int]] = SeedOpt,
                 resume: Optional[str] = typer.Option(None, "--resume", help="Finish an interrupted generate run "
                                                      "directory with its recorded settings (see `ertacache runs`)."),
                 sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
                 compile_: bool = CompileOpt,
                 trust_adapter: bool = TrustAdapterOpt) -> None:
    """Run the pipeline with a plan (without --plan: uncached); saves media, latents, NFE and time per sample."""
    import pandas as pd

    from .commands.generate import run_generate
    from .commands.resume import ResumeOptions, resume_job

    if resume:
        given = None if ctx.get_parameter_source("model").name == "DEFAULT" else model  # resume: the recorded one
        opts = ResumeOptions(given, sets or [], plan, prompt or [], prompts, seed or [], device, compile_,
                             trust_adapter)
        job, samples, plan, resume = resume_job(resume, opts, quiet)
        path = run_generate(job, samples, plan, resume=resume)
    else:
        job = make_job(model, sets, device, quiet, compile_)
        path = run_generate(job, job.eval_samples(prompt, prompts, seed), plan)
    df = pd.read_csv(path / "samples.csv")
    show(df[["index", "prompt", "seed", "nfe", "seconds", "file"]], "generate")
    finish(f"{len(df)} samples ({'plan' if plan else 'uncached'}), NFE {df['nfe'].mean():g} per sample, median "
            f"{df['seconds'].median():.3g} s per sample; grid.png", path)


@app.command("eval")
def eval_cmd(model: str = ModelOpt, plan: Optional[str] = PlanOpt,
             run: Optional[str] = typer.Option(None, "--run", help="An existing generate run to evaluate."),
             prompt: Optional[List[str]] = PromptOpt, prompts: Optional[str] = PromptsOpt,
             seed: Optional[List[int]] = SeedOpt, compare: bool = CompareOpt,
             min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Quality gate: exit 1 if the mean PSNR is lower."),
             max_lpips: Optional[float] = typer.Option(None, "--max-lpips", help="Quality gate: exit 1 if the mean LPIPS is higher."),
             vbench: bool = typer.Option(False, "--vbench", help="VBench's standard dimensions (pip install 'ertacache\\[vbench]')."),
             sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
             compile_: bool = CompileOpt) -> None:
    """Quality (PSNR, SSIM, ...) and measured speedup of a plan (--plan, generated here, or --run) against the
    uncached baseline; optional quality gate."""
    from .commands.eval import quality_gate, run_eval
    from .runs.headlines import eval_headline

    job = make_job(model, sets, device, quiet, compile_)
    path, summary, peers = run_eval(job, job.eval_samples(prompt, prompts, seed), plan, run, with_peers=compare,
                                    vbench=vbench)
    show([{"quantity": k, "value": v} for k, v in summary.items()], "eval: cached vs uncached baseline")
    if peers:
        show([{k: v for k, v in r.items() if k not in ("run", "plan")} for r in peers], "peers at the plan's NFE")
    finish(eval_headline(summary, list(job.recipe.eval.metrics)), path)
    failures = quality_gate(path, min_psnr, max_lpips)
    if failures:
        say(f"quality gate failed: {failures[0]}", "bold red", stderr=True)
        for line in failures[1:]:
            say(f"  {line}", stderr=True)
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = LambdaOpt,
              nfe: Optional[List[str]] = NfeOpt, methods: Optional[List[str]] = MethodsOpt,
              compare: bool = CompareOpt,
              pick_speedup: Optional[float] = typer.Option(None, "--pick-speedup", help="Pick the lambda with the best calibration "
                                                           "PSNR among those whose measured calibration speedup is >= X."),
              pick_psnr: Optional[float] = typer.Option(None, "--pick-psnr", help="Pick the fastest lambda whose calibration PSNR is >= Y dB."),
              old_speedup: Optional[str] = retired_opt("sweep", "--target-speedup"),
              old_psnr: Optional[str] = retired_opt("sweep", "--min-psnr"),
              samples: Optional[int] = SamplesOpt, method: Optional[str] = MethodOpt,
              auto_trials: Optional[int] = AutoTrialsOpt,
              sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """Lambda grid, or every method and peer at matched NFEs, through search -> fit -> generate -> eval: table, plots."""
    from .commands.sweep import run_sweep
    from .presets import method_overrides
    from .runs.headlines import rows_headline

    retired("sweep", "--target-speedup", old_speedup)
    retired("sweep", "--min-psnr", old_psnr)
    job = make_job(model, list(sets or []) + auto_sets(auto_trials), device, quiet, method=method)
    names = parse_names(methods) or None
    for name in names or []:
        method_overrides(name)
    nfes = integers(nfe, "--nfe") if nfe else (
        None if lambdas or pick_speedup is not None or pick_psnr is not None else list(job.recipe.search.nfe))
    path, df, picked = run_sweep(job, parse_lambdas(lambdas) or list(job.recipe.search.lambdas), compare,
                                 pick_speedup, pick_psnr, nfes, names, samples)
    cols = ["method", "target_nfe", "lambda", "setting", "nfe", "ideal_speedup", "speedup", "speedup_q1", "speedup_q3",
            "timing_note", "cpu_speedup", "cpu_speedup_q1", "cpu_speedup_q3", *job.recipe.eval.metrics, "calib_psnr",
            "best_calibrated", "note"]
    show(df[[c for c in cols if c in df.columns]], f"sweep on {job.recipe.name} (full table: sweep.csv)")
    if picked:
        say(f"chosen lambda: {picked['lambda']} ({picked['reason']})", "bold")
    if nfes and compare:
        from .runs.report import goal_cells

        show(goal_cells(df), "per NFE: best calibrated plan vs the best peer at matched NFE (goal.csv)")
    best = df[df["best_calibrated"] == True] if "best_calibrated" in df else df.iloc[0:0]  # noqa: E712
    finish(rows_headline(best.to_dict("records") or df.to_dict("records")[:3], list(job.recipe.eval.metrics),
                          "best calibrated per NFE" if len(best) else f"{len(df)} rows")
            + "; sweep.csv, pareto.png, error_profile.png", path)


@app.command("demo")
def demo_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = LambdaOpt,
             ablation: bool = ablation_opt(True), samples: int = typer.Option(8, "--samples", help=SAMPLES_HELP),
             method: Optional[str] = MethodOpt,
             sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt) -> None:
    """The whole loop on one recipe: profile -> search -> fit -> generate -> eval, one table."""
    from .commands.demo import run_demo
    from .runs.headlines import rows_headline

    job = make_job(model, sets, device, quiet, method=method)
    path, df, abl = run_demo(job, parse_lambdas(lambdas) or list(job.recipe.search.lambdas), ablation, samples)
    show(df, f"ERTACache on {job.recipe.name}: validated fit per lambda vs uncached")
    if len(abl):
        show(abl, "ablation (paper Table 3) at one lambda, same cached steps per row")
    finish(rows_headline(df.to_dict("records")[1:], list(job.recipe.eval.metrics), "validated plans"), path)


@app.command("bench")
def bench_cmd(model: str = ModelOpt, lambdas: Optional[List[str]] = LambdaOpt, samples: Optional[int] = SamplesOpt,
              ablation: bool = ablation_opt(False), method: Optional[str] = MethodOpt,
              sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
              compile_: bool = CompileOpt) -> None:
    """The paper's benchmark end to end (`make bench-*`: the paper's --method ertacache and lambdas); stops at once,
    naming what is missing, without a GPU or the weights."""
    from .commands.bench import bench_job, run_bench
    from .runs.headlines import rows_headline

    job = bench_job(model, sets, device, quiet, method)
    job.compile = compile_
    path, df, rows = run_bench(job, parse_lambdas(lambdas) or list(job.recipe.search.lambdas), samples, ablation)
    show(df, f"bench: ERTACache on {job.recipe.name} (bench.csv, resources.json)")
    finish(rows_headline(rows, list(job.recipe.eval.metrics), "bench"), path)


@app.command("overhead")
def overhead_cmd(model: str = ModelOpt,
                 ratios: Optional[List[float]] = typer.Option(None, "--ratio", "-r",
                                                              help="Share of steps cached, evenly spaced (repeatable; default 0.5)."),
                 predictors: Optional[List[str]] = PredictorsOpt,
                 old_predictor: Optional[List[str]] = typer.Option(None, "--predictor", hidden=True,
                                                                   help="Deprecated: --predictors."),
                 sets: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt, quiet: bool = QuietOpt,
                 compile_: bool = CompileOpt) -> None:
    """Cached vs uncached wall time in one run, against the ideal NFE ratio; no calibration, any weights."""
    from .commands.bench import check_device
    from .commands.overhead import PREDICTORS, run_overhead

    if old_predictor:
        deprecated("overhead", "--predictor")
    check_device(device)
    job = make_job(model, sets, device, quiet, compile_)
    path, df = run_overhead(job, list(ratios or [0.5]), parse_names(predictors) + parse_names(old_predictor)
                            or list(PREDICTORS))
    show(df.round(3), f"overhead: {job.recipe.name} on {job.device} (overhead.csv)")
    finish("; ".join(f"{r['predictor']} ideal {r['ideal']:.2f}x: {r['speedup']:.2f}x ({r['of ideal']:.0%})"
                      for r in df.to_dict("records")), path)


from . import cli_tools  # noqa: E402,F401  (registers the inspection commands on app)


def _fail(message: Optional[str], exc: BaseException, code: int, label: str = "error") -> None:
    """Print one line (the error, then what the run kept and how to resume it, also through click's Abort), exit."""
    note = next((e.ertacache_note for e in (exc, exc.__cause__, exc.__context__) if hasattr(e, "ertacache_note")), None)
    line = "; ".join(x for x in (message, note) if x) or "stopped before any run directory was written"
    say(f"{label}: {line}", "bold red", stderr=True)
    sys.exit(code)


def main() -> None:
    """Console entry point: user errors and failed file operations print one line and exit 2; Ctrl-C one line, 130."""
    import signal

    from .errors import Interrupted, os_error_message, out_of_memory

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        _fail(exc.message, exc, 2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt, Interrupted) as exc:
        signum = exc.args[0] if isinstance(exc, Interrupted) and exc.args else signal.SIGINT
        _fail(None, exc, 128 + int(signum), "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)")
    except MemoryError as exc:
        _fail(out_of_memory(exc), exc, 2)
    except OSError as exc:
        _fail(os_error_message(exc), exc, 2)
    except Exception as exc:  # click's usage errors (Typer's own copy of click: recognised by their interface)
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in ("out of memory", "can't allocate memory")):
            _fail(out_of_memory(exc), exc, 2)
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        ctx = getattr(exc, "ctx", None)
        what = "options" if ctx is not None and " " in ctx.command_path else "commands"
        hint = f" (`{ctx.command_path} --help` lists the {what})" if ctx is not None else ""
        _fail(" ".join(str(exc.format_message()).split()) + hint, exc, exc.exit_code)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
