"""profile: uncached calibration runs with ground-truth residual logging -> a profile run directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, require_same
from ..runs.artifacts import find_run, read_json, save_tensors
from ..runs.job import Job

PROFILE_FILE = "profile.json"


def run_profile(job: Job, keep_tensors: bool = False) -> Path:
    """Run the calibration batch uncached; write statistics, baseline latents and media."""
    import pandas as pd
    import torch

    from ..calibration.profile import record_profile
    from ..runs.media import to_uint8
    from ..runs.tables import save_table

    samples = job.calibration()
    with job.rundir("profile") as run:
        job.start(run, "profile", samples.seeds)
        res = record_profile(job.sampler, samples, job.recipe.cache.residual, keep_tensors, job.quiet,
                             holdout=job.recipe.calibration.holdout)
        stats = res.data["stats"]
        run.write_json(PROFILE_FILE, {"recipe": job.recipe.name, "recipe_key": job.key, **res.data})
        save_tensors(run.file("baseline_latents.safetensors"), {"latents": res.latents})
        save_tensors(run.file("baseline_media.safetensors"), {"media": torch.from_numpy(to_uint8(res.media))})
        if keep_tensors:
            save_tensors(run.file("residuals.safetensors"), res.tensors)
        rows = [{"branch": b, "step": k, **{key: stats[b][key][k] for key in ("R", "dR_rel", "v", "dv")}}
                for b in stats for k in range(res.data["steps"])]
        save_table(pd.DataFrame(rows), run.path, "stats")
    return job.finished(run)


def profile_matches(job: Job):
    """Predicate: a profile made with this recipe's model/sampling settings, calibration set and held-out split."""
    digest, holdout = job.calibration().digest(), float(job.recipe.calibration.holdout)
    split = lambda d: "split" in d and (d["split"] is None or d["split"].get("holdout") == holdout)
    return lambda d: d.get("recipe_key") == job.key and d.get("calibration", {}).get("digest") == digest and split(d)


def load_profile(path: Path | str, job: Job) -> tuple[dict, Path]:
    """Read a profile run directory and check it belongs to this recipe."""
    p = Path(path)
    if not (p / PROFILE_FILE).is_file():
        raise UserError(f"{p} is not a profile run directory (no {PROFILE_FILE}); run `ertacache profile` first")
    data = read_json(p / PROFILE_FILE)
    require_same(f"profile {p}", "model/sampling settings key", data.get("recipe_key"), job.key,
                 f"re-run `ertacache profile --model {job.recipe.name}`")
    return data, p


def find_or_make_profile(job: Job, given: str | None) -> tuple[dict, Path]:
    """--profile DIR, else the newest matching profile in results/, else run one now."""
    if given:
        return load_profile(given, job)
    found = find_run(job.recipe.name, "profile", PROFILE_FILE, profile_matches(job))
    return load_profile(found if found is not None else run_profile(job.as_command("profile")), job)


def memory_estimate(job: Job) -> str | None:
    """The estimated peak memory of this job's calibration pass as one line (None for a model without a config)."""
    import torch

    from ..backbones.memory import describe, estimate_peak

    sampler = job.sampler
    if not hasattr(sampler.pipe.transformer, "config") or "height" not in sampler.call_kwargs:
        return None
    bytes_per = torch.empty((), dtype=sampler.dtype or torch.float32).element_size()
    return describe(estimate_peak(sampler.pipe, sampler.backbone, sampler.call_kwargs, len(job.calibration()),
                                  sampler.micro_batch, bytes_per))
