"""profile: uncached calibration runs with ground-truth residual statistics (docs/method.md "profile")."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import UserError
from .passes import calibration_pass, gather_rows
from .samples import Samples, split_holdout

PREDATES_SPLIT = ("this profile has no fit-part statistics (it predates the held-out split); re-run "
                  "`ertacache profile`")


@dataclass
class Profile:
    """A profile pass: per-step, per-branch statistics (what profile.json holds) and the uncached outputs.

    `stats[branch][key]` are lists over steps of R, dR, dR_rel, v, dv (summed over samples); with a held-out
    split, `fit_stats` are the fit part's alone and `split` records it ({holdout, fit, held_out} sample indices;
    None: every sample is fit data). `latents` / `media` are the uncached final latents and decoded outputs of
    every calibration sample (float media from a pass, uint8 frames from a recorded run); `run` is the run folder
    it was recorded in or read from.
    """

    steps: int
    residual: str
    branches: list[str]
    scheduler: dict
    base_sigmas: list[float]
    sample_shape: dict
    calibration: dict
    stats: dict
    split: dict | None
    seconds: float = 0.0
    model_class: str | None = None
    fit_stats: dict | None = None
    recipe: str | None = None
    recipe_key: str | None = None
    streams: dict | None = None  # per stream [first, last] step it ran (a Wan2.2 expert's range); None: every step
    latents: Any = field(default=None, repr=False, compare=False)
    media: Any = field(default=None, repr=False, compare=False)
    tensors: dict = field(default_factory=dict, repr=False, compare=False)  # every R_k, v_k when asked
    run: Any = field(default=None, repr=False, compare=False)

    IN_MEMORY = ("latents", "media", "tensors", "run")

    def to_json(self) -> dict:
        """The profile.json content (no `fit_stats` key without a split, as before)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.IN_MEMORY}
        if data["fit_stats"] is None:
            data.pop("fit_stats")
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "profile") -> "Profile":
        """A profile.json's content, checked: a missing or malformed field is one line naming it."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: not a profile (expected a JSON object); re-run `ertacache profile`")
        if "split" not in data:
            raise UserError(PREDATES_SPLIT)
        known = {f.name for f in fields(cls)} - set(cls.IN_MEMORY)
        for name in ("steps", "residual", "branches", "scheduler", "base_sigmas", "sample_shape", "calibration",
                     "stats"):
            if name not in data:
                raise UserError(f"{where}: field {name!r} is missing; re-run `ertacache profile`")
        if not isinstance(data["stats"], dict) or set(data["stats"]) != set(data["branches"]):
            raise UserError(f"{where}: stats must hold one entry per branch {data['branches']}; re-run `ertacache profile`")
        if data["split"] is not None and not isinstance(data.get("fit_stats"), dict):
            raise UserError(f"{where}: a split profile needs fit_stats; re-run `ertacache profile`")
        return cls(**{k: v for k, v in data.items() if k in known})

    def media_uint8(self):
        """The uncached outputs as 8-bit frames (..., H, W, 3), as a profile run stores them."""
        import torch

        if self.media.dtype == torch.uint8:
            return self.media
        t = self.media.detach().to("cpu", torch.float32).clamp(0, 1)  # runs/media.py's to_uint8, as a tensor
        return (t * 255).round().to(torch.uint8).movedim(-3, -1)

    def fit_part(self, samples: Samples, holdout: float | None = None) -> tuple[Samples, "Profile"]:
        """(the fit part of `samples`, this profile with the fit part's statistics): what every calibrated choice
        uses. A profile without the split (fewer than 2 prompts: nothing is held out) gives all of both.
        `holdout` (default: the profile's own) must be the share the profile was split with."""
        if self.split is None:
            return samples, self
        recorded = self.split
        holdout = recorded["holdout"] if holdout is None else holdout
        fit_idx, hold_idx = split_holdout(samples, samples.unique_prompts(), holdout)
        if (recorded["holdout"], recorded["fit"], recorded["held_out"]) != (float(holdout), fit_idx, hold_idx):
            raise UserError(f"the profile was split with calibration.holdout {recorded['holdout']:g}, this run uses "
                            f"{holdout:g}: re-run `ertacache profile` with the same holdout")
        return samples.subset(fit_idx), replace(self, stats=self.fit_stats)


def fit_part(profile: Profile, samples: Samples, holdout: float | None = None) -> tuple[Samples, Profile]:
    """`profile.fit_part(samples, holdout)`."""
    return profile.fit_part(samples, holdout)


def _pass(sampler, samples: Samples, residual: str, keep_tensors: bool, quiet: bool):
    """One uncached pass of `samples`: (per-branch statistics summed over samples and ranks, output, recorder)."""
    import torch

    from ..dist import all_sum
    from ..engine import RecordController

    rec = RecordController(sampler.steps, residual, keep_tensors=keep_tensors)
    idx, mine = samples.mine()
    out = calibration_pass(sampler, rec, mine, f"profile ({len(samples)} samples)", quiet)
    stats = {b: {key: all_sum(torch.tensor(vals, dtype=torch.float64)).tolist() for key, vals in rows.items()}
             for b, rows in rec.stats.items()}
    return stats, out, rec, gather_rows(idx, out.latents), gather_rows(idx, out.media)


def _relative(stats: dict) -> dict:
    return {b: dict(rows, dR_rel=[d / r if r > 0 else 0.0 for d, r in zip(rows["dR"], rows["R"])])
            for b, rows in stats.items()}


def record_profile(sampler, samples: Samples, residual: str, keep_tensors: bool = False,
                   quiet: bool = True, holdout: float | None = None) -> Profile:
    """Run the calibration batch uncached; per step and branch ||R_k||, ||R_k - R_{k-1}|| / ||R_k||, ||v_k||, ...

    With `holdout` (and >= 2 prompts) the fit part and the held-out part (`split_holdout`) run as two batches:
    `stats` sums both, `fit_stats` is the fit part's alone (what search and fit normalise by), `split` records it.
    """
    import torch

    prompts = samples.unique_prompts()
    split = split_holdout(samples, prompts, holdout) if holdout is not None and len(prompts) >= 2 else None
    if split is None or keep_tensors:
        stats, out, rec, latents, media = _pass(sampler, samples, residual, keep_tensors, quiet)
        fit_stats = None if split is None else _pass(sampler, samples.subset(split[0]), residual, False, quiet)[0]
        seconds = out.seconds
    else:
        parts = [_pass(sampler, samples.subset(ix), residual, False, quiet) for ix in split]
        (fit_stats, out, rec, *_), hold = parts
        stats = {b: {k: [x + y for x, y in zip(v, hold[0][b][k])] for k, v in rows.items()}
                 for b, rows in fit_stats.items()}
        order = torch.tensor(split[0] + split[1]).argsort()
        latents, media = (torch.cat([parts[0][j], parts[1][j]])[order] for j in (3, 4))
        seconds = parts[0][1].seconds + parts[1][1].seconds
    scheduler = sampler.pipe.scheduler
    return Profile(
        steps=sampler.steps, residual=residual, branches=list(stats),
        scheduler={"class": type(scheduler).__name__, "config": dict(scheduler.config)},
        model_class=type(sampler.transformer).__name__, base_sigmas=out.sigmas,
        sample_shape=rec.call_stats()["shapes"], calibration=samples.to_json(), seconds=seconds,
        stats=_relative(stats), split=None if split is None else {"holdout": float(holdout), "fit": split[0],
                                                                   "held_out": split[1]},
        fit_stats=None if split is None else _relative(fit_stats), streams=stream_ranges(stats),
        latents=latents, media=media, tensors=rec.tensors)


def stream_ranges(stats: dict) -> dict[str, list[int]]:
    """Per stream, the first and last step it ran at (a Wan2.2 expert runs a range of the steps; others all)."""
    out = {}
    for b, rows in stats.items():
        ran = [k for k, v in enumerate(rows["v"]) if v > 0]
        out[b] = [ran[0], ran[-1]] if ran else [0, len(rows["v"]) - 1]
    return out
