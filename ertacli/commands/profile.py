"""profile: uncached calibration runs with ground-truth residual logging -> a profile run directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, require_same
from ..runs.artifacts import find_run, load_tensors, read_json
from ..runs.job import Job
from ..runs.recorder import PROFILE_FILE, record_profile


def make_profile(job: Job, keep_tensors: bool = False):
    """Run the calibration batch uncached (the library's profile pass) and record it; returns the Profile (its
    `run` set to the recorded folder)."""
    from ..calibration import profile as lib

    profile = lib.record_profile(job.sampler, job.calibration(), job.recipe.cache.residual, keep_tensors, job.quiet,
                                 holdout=job.recipe.calibration.holdout)
    profile.recipe, profile.recipe_key = job.recipe.name, job.key
    record_profile(job.recorder, profile, keep_tensors)
    return profile


def run_profile(job: Job, keep_tensors: bool = False) -> Path:
    """`ertacache profile`: statistics, baseline latents and media in a profile run; returns its path."""
    return make_profile(job, keep_tensors).run


def profile_matches(job: Job):
    """Predicate: a profile made with this recipe's model/sampling settings, calibration set and held-out split."""
    digest, holdout = job.calibration().digest(), float(job.recipe.calibration.holdout)
    split = lambda d: "split" in d and (d["split"] is None or d["split"].get("holdout") == holdout)
    return lambda d: d.get("recipe_key") == job.key and d.get("calibration", {}).get("digest") == digest and split(d)


def load_profile(path: Path | str, job: Job, data: dict | None = None):
    """A profile run directory read once: profile.json checked (fields, this recipe's settings key) and its
    uncached latents and 8-bit outputs; returns the Profile (`run` = the folder). `data`: its profile.json
    content when the caller has read it already."""
    from ..calibration.profile import Profile

    p = Path(path)
    if not (p / PROFILE_FILE).is_file():
        raise UserError(f"{p} is not a profile run directory (no {PROFILE_FILE}); run `ertacache profile` first")
    data = read_json(p / PROFILE_FILE) if data is None else data
    require_same(f"profile {p}", "model/sampling settings key", data.get("recipe_key") if isinstance(data, dict)
                 else None, job.key, f"re-run `ertacache profile --model {job.recipe.name}`")
    profile = Profile.from_json(data, f"profile {p}")
    profile.latents = load_tensors(p / "baseline_latents.safetensors")["latents"]
    profile.media = load_tensors(p / "baseline_media.safetensors")["media"]
    profile.run = p
    return profile


def find_or_make_profile(job: Job, given: str | None):
    """--profile DIR, else the newest matching profile in results/, else one made (and recorded) now."""
    if given:
        return load_profile(given, job)
    matches, seen = profile_matches(job), {}

    def match(data: dict) -> bool:  # keeps the matching profile.json's content: read once
        if matches(data):
            seen["data"] = data
            return True
        return False

    found = find_run(job.recipe.name, "profile", PROFILE_FILE, match)
    return load_profile(found, job, seen["data"]) if found is not None else make_profile(job.as_command("profile"))


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
