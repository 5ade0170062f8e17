"""profile: uncached calibration runs with ground-truth residual statistics (docs/method.md "profile")."""

from __future__ import annotations

from dataclasses import dataclass, field

from .passes import calibration_pass, gather_rows
from .samples import Samples


@dataclass
class ProfileResult:
    """What a profile pass gives: per-step statistics (`data`, as profile.json holds them) and the outputs."""

    data: dict
    latents: object  # uncached final latents of every calibration sample (the references fit validates against)
    media: object
    tensors: dict = field(default_factory=dict)  # every R_k, v_k when asked


def record_profile(sampler, samples: Samples, residual: str, keep_tensors: bool = False,
                   quiet: bool = True) -> ProfileResult:
    """Run the calibration batch uncached; per step and branch ||R_k||, ||R_k - R_{k-1}|| / ||R_k||, ||v_k||, ..."""
    import torch

    from ..dist import all_sum
    from ..engine import RecordController

    T = sampler.steps
    rec = RecordController(T, residual, keep_tensors=keep_tensors)
    idx, mine = samples.mine()
    out = calibration_pass(sampler, rec, mine, f"profile ({len(samples)} samples)", quiet)
    stats = {b: {key: all_sum(torch.tensor(vals, dtype=torch.float64)).tolist() for key, vals in rows.items()}
             for b, rows in rec.stats.items()}
    stats = {b: dict(rows, dR_rel=[d / r if r > 0 else 0.0 for d, r in zip(rows["dR"], rows["R"])])
             for b, rows in stats.items()}
    scheduler = sampler.pipe.scheduler
    data = {"steps": T, "residual": residual, "branches": list(rec.stats),
            "scheduler": {"class": type(scheduler).__name__, "config": dict(scheduler.config)},
            "model_class": type(sampler.transformer).__name__,
            "base_sigmas": out.sigmas, "sample_shape": rec.call_stats()["shapes"], "calibration": samples.to_json(),
            "seconds": out.seconds, "stats": stats}
    return ProfileResult(data, gather_rows(idx, out.latents), gather_rows(idx, out.media), rec.tensors)
