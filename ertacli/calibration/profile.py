"""profile: uncached calibration runs with ground-truth residual statistics (docs/method.md "profile")."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .passes import calibration_pass, gather_rows
from .samples import Samples, split_holdout


@dataclass
class ProfileResult:
    """What a profile pass gives: per-step statistics (`data`, as profile.json holds them) and the outputs."""

    data: dict
    latents: object  # uncached final latents of every calibration sample (the references fit validates against)
    media: object
    tensors: dict = field(default_factory=dict)  # every R_k, v_k when asked


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
                   quiet: bool = True, holdout: float | None = None) -> ProfileResult:
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
    data = {"steps": sampler.steps, "residual": residual, "branches": list(stats),
            "scheduler": {"class": type(scheduler).__name__, "config": dict(scheduler.config)},
            "model_class": type(sampler.transformer).__name__,
            "base_sigmas": out.sigmas, "sample_shape": rec.call_stats()["shapes"], "calibration": samples.to_json(),
            "seconds": seconds, "stats": _relative(stats), "streams": stream_ranges(stats)}
    data["split"] = None  # recorded: every sample is fit data (no holdout asked, or one prompt)
    if split is not None:
        data["fit_stats"] = _relative(fit_stats)
        data["split"] = {"holdout": float(holdout), "fit": split[0], "held_out": split[1]}
    return ProfileResult(data, latents, media, rec.tensors)


def stream_ranges(stats: dict) -> dict[str, list[int]]:
    """Per stream, the first and last step it ran at (a Wan2.2 expert runs a range of the steps; others all)."""
    out = {}
    for b, rows in stats.items():
        ran = [k for k, v in enumerate(rows["v"]) if v > 0]
        out[b] = [ran[0], ran[-1]] if ran else [0, len(rows["v"]) - 1]
    return out


def fit_part(profile: dict, samples: Samples, holdout: float | None = None) -> tuple[Samples, dict]:
    """(the fit part of `samples`, `profile` with the fit part's statistics): what every calibrated choice uses.

    A profile recorded without the split (fewer than 2 prompts: nothing is held out) gives all of both.
    `holdout` (default: the profile's own) must be the share the profile was split with.
    """
    if "split" not in profile:
        raise UserError("this profile has no fit-part statistics (it predates the held-out split); re-run "
                        "`ertacache profile`")
    if profile["split"] is None:
        return samples, profile
    recorded = profile["split"]
    holdout = recorded["holdout"] if holdout is None else holdout
    fit_idx, hold_idx = split_holdout(samples, samples.unique_prompts(), holdout)
    if (recorded["holdout"], recorded["fit"], recorded["held_out"]) != (float(holdout), fit_idx, hold_idx):
        raise UserError(f"the profile was split with calibration.holdout {recorded['holdout']:g}, this run uses "
                        f"{holdout:g}: re-run `ertacache profile` with the same holdout")
    return samples.subset(fit_idx), {**profile, "stats": profile["fit_stats"]}
