"""sweep --nfe: each method preset searched to the same NFE, the best calibrated one, and every peer's best."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, Samples


def cached_for(job: Job, branches: list[str], nfe: int) -> int:
    """Cached calls (summed over branches) that leave `nfe` transformer calls per sample."""
    total = len(branches) * job.recipe.sampling.steps
    if not 2 * len(branches) <= nfe <= total:
        raise UserError(f"--nfe {nfe} is out of range for {job.recipe.name}: steps 0 and T-1 always run, so "
                        f"choose {2 * len(branches)}..{total}")
    return total - nfe


def method_plan(job: Job, name: str, cached: int, profile_dir: Path) -> tuple[Job, Path, object]:
    """(job with the preset, fitted plan folder, plan) for preset `name` caching >= `cached` calls."""
    from ..plan import find_plan_dir
    from ..presets import method_overrides
    from .fit import run_fit
    from .search import run_search

    jv = job.variant(method_overrides(name))
    search_dir, df = run_search(jv, [], str(profile_dir), cached_steps=cached)
    fit_dir, plan = run_fit(jv, str(search_dir / df["plan"].iloc[0]))
    return jv, find_plan_dir(fit_dir), plan


def matched_rows(job: Job, samples: Samples, base_dir: Path, profile: dict, profile_dir: Path, nfe: int,
                 methods: list[str], with_peers: bool) -> tuple[list[dict], list]:
    """Rows at one target NFE: every preset (best on calibration PSNR marked), then the peers; and the plans."""
    from .compare import peer_rows
    from .demo import _row
    from .sweep import calibration_quality

    cached = cached_for(job, list(profile["branches"]), nfe)
    ours, plans = [], []
    for name in methods:
        jv, plan_dir, plan = method_plan(job, name, cached, profile_dir)
        row = {**_row(jv, samples, base_dir, plan_dir, name, plan),
               **calibration_quality(jv, plan_dir, profile_dir, timed=False)}
        row["method"] = row.pop("row")
        ours.append({**row, "target_nfe": nfe, "best_calibrated": False})
        plans.append(plan)
    best = max(ours, key=lambda r: r["calib_psnr"])
    best["best_calibrated"] = True
    peers = peer_rows(job, samples, base_dir, Path(best["plan"]), list(job.recipe.eval.metrics)) if with_peers else []
    return ours + [{**r, "target_nfe": nfe} for r in peers], plans
