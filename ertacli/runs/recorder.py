"""The recorder: writes run folders from the objects the library returns (as lm-evaluation-harness keeps its
tracker apart from `simple_evaluate`).

`Recorder` owns what every run folder holds (resolved recipe, the command line that makes the run alone, the
environment, resources) and which rank writes it; `record_profile`, `record_search`, `record_fit` and
`record_uniform` write one kind of run each from a `Profile` / `Plan`, and note on the object where it went
(`profile.run`, `plan.folder`), so a command that keeps composing works on the objects, never on what it wrote.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from .artifacts import save_tensors, write_resources
from .rundir import RunDir, env_info

PROFILE_FILE = "profile.json"


@dataclass
class Recorder:
    """Where and how a command's runs are recorded: the recipe they used, the device, the command line."""

    recipe: object  # the resolved Recipe
    device: str
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    model_arg: str | None = None  # --model as given, and every override applied, so a sub-run can name its own
    sets: list[str] = field(default_factory=list)  # command line (see `as_command`)

    def as_command(self, command: str, *args) -> "Recorder":
        """This recorder recording, for a run made inside another command (a sweep's profile, search, fit,
        TeaCache fit), the command line that makes that run on its own, so `reproduce` re-runs just that."""
        if self.model_arg is None or self.argv[1:2] == [command]:
            return self
        argv = [self.argv[0] if self.argv else "ertacache", command, "--model", self.model_arg]
        for s in self.sets:
            argv += ["--set", s]
        return replace(self, argv=argv + [str(a) for a in args])

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


def record_profile(rec: Recorder, profile, keep_tensors: bool = False) -> Path:
    """A profile run: profile.json, the uncached latents and 8-bit outputs, the statistics table."""
    import pandas as pd

    from .tables import save_table

    with rec.rundir("profile") as run:
        rec.start(run, "profile", profile.calibration["seeds"])
        run.write_json(PROFILE_FILE, profile.to_json())
        save_tensors(run.file("baseline_latents.safetensors"), {"latents": profile.latents})
        save_tensors(run.file("baseline_media.safetensors"), {"media": profile.media_uint8()})
        if keep_tensors:
            save_tensors(run.file("residuals.safetensors"), profile.tensors)
        stats = profile.stats
        rows = [{"branch": b, "step": k, **{key: stats[b][key][k] for key in ("R", "dR_rel", "v", "dv")}}
                for b in stats for k in range(profile.steps)]
        save_table(pd.DataFrame(rows), run.path, "stats")
    profile.run = rec.finished(run)
    return profile.run


def plan_table(plans: list, folders: list[Path]):
    """search's summary table: one row per plan, with its folder relative to the run."""
    import pandas as pd

    from ..plan import plan_summary

    return pd.DataFrame([{**plan_summary(p), "plan": str(f)} for p, f in zip(plans, folders)])


def record_search(rec: Recorder, plans: list, profile_run, target: dict, seeds: list[int], auto_rows=None):
    """A search run: one plan folder per plan (plans/lambda-L, or plans/auto with auto.csv), summary, search.json;
    returns (run path, summary table). Each plan's `folder` is set to where it now lives."""
    from ..calibration.auto_report import save_auto
    from .tables import save_table

    with rec.rundir("search") as run:
        rec.start(run, "search", seeds)
        folders = []
        for plan in plans:
            folder = run.subdir("plans/auto" if auto_rows is not None else f"plans/lambda-{plan.lam:g}")
            save_auto(plan, auto_rows, folder) if auto_rows is not None else plan.save(folder)
            folders.append(folder.relative_to(run.path))
        df = plan_table(plans, folders)
        save_table(df, run.path, "summary")
        info = {"profile_run": str(profile_run), "lambdas": [p.lam for p in plans], "target": target}
        if auto_rows is not None:
            info = {"profile_run": str(profile_run), "method": "auto", "auto": plans[0].auto, "target": target}
        run.write_json("search.json", info)
    final = rec.finished(run)
    for plan, folder in zip(plans, folders):
        plan.folder = final / folder
    return final, df


def record_fit(rec: Recorder, plan, source_plan, latents, seeds: list[int]) -> Path:
    """A fit run: the fitted plan, fit.json (decision and candidates), the fit-part latents; sets plan.folder."""
    with rec.rundir("fit") as run:
        rec.start(run, "fit", seeds)
        plan.save(run.subdir("plan"))
        run.write_json("fit.json", {"source_plan": str(source_plan), **plan.fit})
        if latents is not None:
            save_tensors(run.file("fit_latents.safetensors"), {"latents": latents})
    final = rec.finished(run)
    plan.folder = final / "plan"
    return final


def record_uniform(rec: Recorder, plan):
    """The uniform counterpart of `plan` as its own run; returns it (its `folder` set)."""
    from ..calibration.uniform import uniform_plan

    uniform = uniform_plan(plan)
    with rec.rundir("uniform") as run:
        rec.start(run, "uniform", plan.calibration["seeds"])
        uniform.save(run.subdir("plan"))
    uniform.folder = run.final_path / "plan"
    return uniform
