"""One lockstep pipeline call of a calibration batch under a controller, and its outputs gathered over ranks."""

from __future__ import annotations

from ..plan import Plan
from ..progress import task
from .samples import Samples


def apply_controller(plan: Plan, channel_dim: int, coeffs=None, sigmas=None):
    """The generate-time controller for a plan (optionally with candidate coefficients / sigmas)."""
    from ..engine import ApplyController, LiveSchedule

    schedule = LiveSchedule(plan.base_sigmas, fixed=sigmas) if sigmas is not None else None
    rect = plan.rectification
    return ApplyController(plan.steps, plan.cached_sets(), coeffs, rect.form, rect.granularity, channel_dim, schedule,
                           plan.residual, plan.prediction)


def calibration_pass(sampler, controller, samples: Samples, label: str, quiet: bool = True):
    """One pipeline call of the whole batch with `controller`'s hooks attached; a step progress bar unless quiet."""
    from ..engine import Session

    with Session(sampler.pipe, sampler.backbone, controller, sampler.micro_batch, sampler.compile) as session, \
            task(label, sampler.steps, quiet) as advance:
        session.fresh()
        return sampler.run(samples.prompts, samples.seeds, on_step=advance)


def gather_rows(idx: list[int], t):
    """Rows of `t` computed on each rank for sample indices `idx`, put back in sample order (on every rank)."""
    import torch

    from ..dist import WORLD, gather

    if not WORLD.active:
        return t
    parts = gather((idx, t.cpu()))
    order = sorted((i, k, j) for k, (ids, _) in enumerate(parts) for j, i in enumerate(ids))
    return torch.stack([parts[k][1][j] for _, k, j in order])
