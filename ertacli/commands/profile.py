"""profile: uncached calibration runs with ground-truth residual logging (SPEC "profile")."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, calibration_pass, find_run, gather_rows, read_json, save_tensors

PROFILE_FILE = "profile.json"


def run_profile(job: Job, keep_tensors: bool = False) -> Path:
    """Run the calibration batch uncached, record per-step per-branch statistics and the baseline outputs."""
    import pandas as pd
    import torch

    from ..dist import all_sum
    from ..engine import RecordController
    from ..media import to_uint8
    from ..tables import save_table

    samples = job.calibration()
    T = job.recipe.sampling.steps
    rec = RecordController(T, job.recipe.cache.residual, keep_tensors=keep_tensors)
    with job.rundir("profile") as run:
        job.start(run, "profile", samples.seeds)
        idx, mine = samples.mine()
        out = calibration_pass(job, rec, mine, f"profile ({len(samples)} samples)")
        stats = {b: {key: all_sum(torch.tensor(vals, dtype=torch.float64)).tolist() for key, vals in rows.items()}
                 for b, rows in rec.stats.items()}
        stats = {b: dict(rows, dR_rel=[d / r if r > 0 else 0.0 for d, r in zip(rows["dR"], rows["R"])])
                 for b, rows in stats.items()}
        latents, media = gather_rows(idx, out.latents), gather_rows(idx, out.media)
        run.write_json(PROFILE_FILE, {
            "recipe": job.recipe.name, "recipe_key": job.key, "steps": T,
            "residual": job.recipe.cache.residual, "branches": list(rec.stats),
            "scheduler": {"class": type(job.loaded.pipe.scheduler).__name__,
                          "config": dict(job.loaded.pipe.scheduler.config)},
            "base_sigmas": out.sigmas, "sample_shape": rec.shapes, "calibration": samples.to_json(),
            "seconds": out.seconds, "stats": stats,
        })
        save_tensors(run.file("baseline_latents.safetensors"), {"latents": latents})
        save_tensors(run.file("baseline_media.safetensors"), {"media": torch.from_numpy(to_uint8(media))})
        if keep_tensors:
            save_tensors(run.file("residuals.safetensors"), rec.tensors)
        rows = [{"branch": b, "step": k, **{key: stats[b][key][k] for key in ("R", "dR_rel", "v", "dv")}}
                for b in stats for k in range(T)]
        save_table(pd.DataFrame(rows), run.path, "stats")
    return job.finished(run)


def profile_matches(job: Job):
    """Predicate: a profile made with this recipe's model/sampling settings and calibration set."""
    digest = job.calibration().digest()
    return lambda d: d.get("recipe_key") == job.key and d.get("calibration", {}).get("digest") == digest


def load_profile(path: Path | str, job: Job) -> tuple[dict, Path]:
    """Read a profile run directory and check it belongs to this recipe."""
    p = Path(path)
    data = read_json(p / PROFILE_FILE) if (p / PROFILE_FILE).is_file() else None
    if data is None:
        raise UserError(f"{p} is not a profile run directory (no {PROFILE_FILE}); run `ertacache profile` first")
    if data.get("recipe_key") != job.key:
        raise UserError(f"profile {p} was made with other model/sampling settings than recipe {job.recipe.name}: "
                        f"re-run `ertacache profile --model {job.recipe.name}`")
    return data, p


def find_or_make_profile(job: Job, given: str | None) -> tuple[dict, Path]:
    """--profile DIR, else the newest matching profile in results/, else run one now."""
    if given:
        return load_profile(given, job)
    found = find_run(job.recipe.name, "profile", PROFILE_FILE, profile_matches(job))
    return load_profile(found if found is not None else run_profile(job), job)
