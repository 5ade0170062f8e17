"""`ertacache` commands that inspect and carry results: recipes, methods, validate, report, reproduce, runs, estimate,
export (the calibration loop's commands are in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_app import app, finish, say, show
from .cli_options import SetOpt, TrustAdapterOpt, integers, renamed, retired, retired_opt
from .errors import UserError


@app.command("recipes")
def recipes_cmd(action: Optional[str] = typer.Argument(None, help="`new`: write a recipe (with --from)."),
                source: Optional[str] = typer.Option(None, "--from", help="recipes new: a diffusers pipeline folder "
                                                     "(model_index.json) or hub id."),
                force: bool = typer.Option(False, "--force", help="recipes new: replace ./recipes/NAME.yaml."),
                methods: bool = retired_opt("recipes", "--methods", flag=True)) -> None:
    """List the recipes: name, pipeline class, steps, size/frames, branches, method, and where each was found.

    `ertacache recipes new --from MODEL_DIR_OR_HUB_ID` writes ./recipes/NAME.yaml from the pipeline's
    model_index.json.
    """
    from .assets import available_recipes
    from .backbones.discover import branches_by_name
    from .presets import preset_of
    from .recipe import list_recipes

    retired("recipes", "--methods", methods)
    if action is not None:
        return _recipes_new(action, source, force)
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
                     "branches": ",".join(branches_by_name(r.model.pipeline)), "method": preset_of(r),
                     "source": r.model.path or r.model.source, "from": origin.get(name, "-")})
    show(rows, "recipes (lookup order: ./recipes, $ERTACACHE_RECIPES, bundled)")
    finish(f"{len(rows)} recipes ({sum(isinstance(r, str) for _, r in list_recipes())} invalid)")


def _recipes_new(action: str, source: Optional[str], force: bool) -> None:
    from .backbones.recipe_writer import write_recipe

    if action != "new" or not source:
        raise UserError("usage: ertacache recipes new --from MODEL_DIR_OR_HUB_ID [--force] (or `recipes` to list)")
    path = write_recipe(source, None, force)
    finish(f"wrote {path}: run it with --model {path}")


@app.command("methods")
def methods_cmd() -> None:
    """List the --method presets: what each is and the recipe overrides it applies."""
    from .presets import METHODS

    show([{"method": k, "what": m.summary, "overrides": " ".join(m.overrides)} for k, m in METHODS.items()],
          "--method presets (applied over the recipe, under --set)")
    finish(f"{len(METHODS)} presets; `--method ertacache` is the paper's method")


@app.command("validate")
def validate_cmd(recipe: str = typer.Argument(..., help="Recipe name or path."), sets: Optional[List[str]] = SetOpt) -> None:
    """Check one recipe: schema, includes, backbone, prompt files."""
    from .backbones.discover import branches_by_name
    from .recipe import resolve_recipe

    r = resolve_recipe(recipe, sets or [])
    branches_by_name(r.model.pipeline)
    n_cal, n_eval = len(r.read_prompts("calibration")), len(r.read_prompts("eval"))
    finish(f"ok {r.name}: {r.model.pipeline}, {r.sampling.steps} steps, {n_cal} calibration prompts x "
            f"{len(r.calibration.seeds)} seeds, {n_eval} eval prompts")


@app.command("report")
def report_cmd(run: str = typer.Argument(..., help="A matched-NFE sweep run directory (results/NAME/sweep-...)."),
               goal_db: float = typer.Option(1.0, "--goal-db", help="The per-cell goal: best calibrated plan this many "
                                             "dB PSNR above every peer's best matched row.")) -> None:
    """A finished matched-NFE sweep as Markdown, from its sweep.csv: the compact table and the per-cell goal."""
    from .runs.report import render

    print(render(run, goal_db), end="")


@app.command("reproduce")
def reproduce_cmd(run_dir: str = typer.Argument(..., help="A run directory to re-run and compare."),
                  trust_adapter: bool = TrustAdapterOpt) -> None:
    """Re-run a run directory's exact command and report whether the outputs match."""
    from .commands.reproduce import run_reproduce

    new, df, ok, note = run_reproduce(Path(run_dir), trust_adapter)
    show(df, "reproduce: " + ("exact match" if ok else "MISMATCH"))
    say(note)
    bad = int((df["status"] != "match").sum()) if len(df) else 0
    finish(f"{'exact match' if ok else 'MISMATCH'}: {len(df) - bad} of {len(df)} files match", new)
    if not ok:
        raise typer.Exit(1)


@app.command("runs")
def runs_cmd(clean: bool = typer.Option(False, "--clean", help="Remove the ones holding no finished sample.")) -> None:
    """Incomplete run directories (.tmp-*): status, finished samples and the command that resumes each."""
    from .commands.runs import clean_runs, incomplete_runs

    rows = incomplete_runs()
    removed = clean_runs(rows) if clean else []
    show([{k: v for k, v in r.items() if k != "cleanable"} for r in rows if r["run"] not in removed] or
          [{"run": "none"}], "incomplete runs" + (f" ({len(removed)} empty ones removed)" if clean else ""))
    finish(f"{len(rows)} incomplete runs" + (f", {len(removed)} holding nothing removed" if clean else ""))


@app.command("estimate")
def estimate_cmd(n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Number of eval prompts."),
                 old_prompts: Optional[str] = retired_opt("estimate", "--prompts"),
                 n_seeds: Optional[int] = typer.Option(None, "--n-seeds", help="Videos per prompt (default 5)."),
                 old_seeds: Optional[int] = typer.Option(None, "--seeds", hidden=True, help="Deprecated: --n-seeds."),
                 baseline_seconds: float = typer.Option(..., "--baseline-seconds", help="Measured uncached latency per video."),
                 cached_seconds: float = typer.Option(..., "--cached-seconds", help="Measured cached latency per video."),
                 gpus: Optional[List[str]] = typer.Option(None, "--gpus", help="GPU counts: repeat or comma list "
                                                          "(default: 1,8,64)."),
                 n_calibration: Optional[int] = typer.Option(None, "--n-calibration-prompts",
                                                             help="Number of calibration prompts (default 0)."),
                 old_calibration: Optional[int] = typer.Option(None, "--calibration-prompts", hidden=True,
                                                               help="Deprecated: --n-calibration-prompts."),
                 calibration_passes: int = typer.Option(0, "--calibration-passes", help="profile + search + fit passes.")) -> None:
    """Expected wall time of a data-parallel eval (baseline + cached) on N GPUs, from measured latencies."""
    from .commands.estimate import estimate_rows

    retired("estimate", "--prompts", old_prompts)
    if n_prompts is None:
        raise UserError("estimate needs --n-prompts N (the number of eval prompts)")
    n_seeds = renamed("estimate", "--seeds", old_seeds, n_seeds, 5)
    n_calibration = renamed("estimate", "--calibration-prompts", old_calibration, n_calibration, 0)
    counts = integers(gpus or ["1,8,64"], "--gpus")
    rows = estimate_rows(n_prompts, n_seeds, baseline_seconds, cached_seconds, counts, calibration_passes,
                         n_calibration)
    show(rows, "estimated wall time (hours), perfect data parallelism over prompts")
    finish("; ".join(f"{r['gpus']} GPUs: {r['total_hours']:.3g} h" for r in rows))


@app.command("export")
def export_cmd(plan: str = typer.Argument(..., help="Plan folder (or a search/fit run holding one plan)."),
               to: str = typer.Option("cache-dit", "--to", help="Target format: cache-dit (steps_computation_mask)."),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: ./<to>.json; "
                                                  "never written into the plan's run unless named here)."),
               branch: Optional[str] = typer.Option(None, "--branch", help="Export this branch's cached steps "
                                                    "(default: steps every branch caches).")) -> None:
    """Write a plan's computed-step mask for another caching library (what carries over is listed in the file)."""
    from .export import output_path, read_export, write_export
    from .plan import load_plan

    loaded = load_plan(plan)
    path = write_export(loaded, output_path(out, to), to=to, branch=branch, source=loaded.folder)
    data = read_export(path)
    mask = "".join(str(int(v)) for v in data["steps_computation_mask"])
    for line in data["does_not_carry_over"]:
        say(f"not carried over: {line}", "yellow")
    finish(f"steps_computation_mask ({data['num_inference_steps']} steps, 1 = compute) {mask}; wrote {path}")
