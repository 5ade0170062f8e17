"""Peers in the same table: diffusers' built-in caches and a uniform cache, each at the plan's NFE."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, Samples


def tune_peer(job: Job, name: str, target_nfe: int, probe: Samples) -> dict:
    """Try the peer's grid on the probe samples; keep the setting whose NFE is nearest the target (ties: more NFE)."""
    from ..peers import PEERS, mag_ratios
    from .methods import PeerMethod

    peer = PEERS[name]
    extra = {}
    if peer.needs_calibration:
        extra["mag_ratios"] = mag_ratios(job.loaded, job.recipe, probe.prompts[0], probe.seeds[0])
    tried = []
    for setting in peer.grid:
        with PeerMethod(job, name, setting, extra) as m:
            nfe = sum(m.run(p, s)[1] for p, s in zip(probe.prompts, probe.seeds)) / len(probe)
        tried.append((abs(nfe - target_nfe), -nfe, setting, nfe))
    _, _, setting, nfe = min(tried, key=lambda t: (t[0], t[1]))
    return {"setting": setting, "probe_nfe": nfe, "extra": extra, "tried": len(tried)}


def method_row(job: Job, samples: Samples, base_dir: Path, method, label: str, metrics: list[str]) -> dict:
    """Generate with `method`, compare with the baseline, time it against the baseline: one table row."""
    from .evaluate import compare, paired_timing
    from .generate import run_generate

    _, s = compare(job, run_generate(job, samples, method=method), base_dir, metrics)
    s.update(paired_timing(job, samples, method))
    return {"method": label, "nfe": s["nfe"], "baseline_nfe": s["baseline_nfe"], "ideal_speedup": s["ideal_speedup"],
            "speedup": s["speedup"], **{m: s[m] for m in metrics}, "run": s["run"]}


def peer_rows(job: Job, samples: Samples, base_dir: Path, plan_dir: Path, metrics: list[str]) -> list[dict]:
    """One row per available peer plus a uniform cache, all tuned to the plan's NFE."""
    from ..peers import PEERS, available_peers
    from ..plan import load_plan
    from .demo import save_uniform
    from .methods import PeerMethod, PlanMethod

    plan, _ = load_plan(plan_dir)
    probe = job.calibration().subset([0])
    rows = [{**method_row(job, samples, base_dir, PlanMethod(job, str(save_uniform(job, plan))),
                          "uniform cache", metrics), "setting": f"{plan.n_cached} cached, evenly spaced",
             "target_nfe": plan.nfe}]
    for name in available_peers():
        try:
            tuned = tune_peer(job, name, plan.nfe, probe)
            method = PeerMethod(job, name, tuned["setting"], tuned["extra"])
            row = method_row(job, samples, base_dir, method, name, metrics)
        except (RuntimeError, ValueError, TypeError, AttributeError, UserError) as exc:
            rows.append({"method": name, "target_nfe": plan.nfe, "note": f"not run: {str(exc).splitlines()[0]}"})
            continue
        rows.append({**row, "setting": str(tuned["setting"]), "target_nfe": plan.nfe, "note": PEERS[name].note})
    return rows
