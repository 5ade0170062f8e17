"""estimate: expected wall time of a data-parallel evaluation from measured per-video latencies."""

from __future__ import annotations

import math


def estimate_rows(prompts: int, seeds: int, baseline_s: float, cached_s: float, gpus: list[int],
                  calibration_passes: int = 0, calibration_prompts: int = 0) -> list[dict]:
    """Hours per GPU count: every rank takes ceil(videos / gpus) videos, baseline and cached each (no overlap)."""
    from ..errors import UserError

    for name, v in (("--n-prompts", prompts), ("--n-seeds", seeds), ("--baseline-seconds", baseline_s),
                    ("--cached-seconds", cached_s), *(("--gpus", g) for g in gpus)):
        if not v > 0 or v != v or v == float("inf"):
            raise UserError(f"{name} must be a positive number, got {v}")
    if calibration_passes < 0 or calibration_prompts < 0:
        raise UserError("--calibration-passes and --n-calibration-prompts must be 0 or more")
    videos = prompts * seeds
    rows = []
    for g in gpus:
        per_rank = math.ceil(videos / g)
        calib = calibration_passes * math.ceil(calibration_prompts / g) * baseline_s
        rows.append({"gpus": g, "videos": videos, "videos_per_gpu": per_rank,
                     "baseline_hours": per_rank * baseline_s / 3600, "cached_hours": per_rank * cached_s / 3600,
                     "calibration_hours": calib / 3600,
                     "total_hours": (per_rank * (baseline_s + cached_s) + calib) / 3600})
    return rows
