"""Peers in the same table: diffusers' built-in caches and a uniform cache, each at the plan's NFE."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import Job, Samples


def probe_refs(job: Job, probe: Samples) -> list:
    """Uncached outputs of the probe samples: what a peer's settings are scored against while tuning."""
    from .methods import PlanMethod

    with PlanMethod(job, None) as m:
        return [m.run(p, s)[0].media[0] for p, s in zip(probe.prompts, probe.seeds)]


def _pick(tried: list[dict], target_nfe: float) -> dict:
    """Best PSNR among settings matching the NFE (target - 1 <= NFE <= target); else the nearest NFE (then fewer)."""
    matched = [t for t in tried if target_nfe - 1 <= t["nfe"] <= target_nfe]
    if matched:
        return max(matched, key=lambda t: t["psnr"])
    return min(tried, key=lambda t: (abs(t["nfe"] - target_nfe), t["nfe"]))


def tune_peer(job: Job, name: str, target_nfe: int, probe: Samples, refs: list | None = None) -> dict:
    """The peer's whole grid on the probe samples; the best-PSNR setting at the target NFE (`_pick`)."""
    from ..metrics import compute_metrics
    from ..peers import PEERS, mag_ratios
    from .methods import PeerMethod

    peer = PEERS[name]
    refs = refs if refs is not None else probe_refs(job, probe)
    extra = {}
    if peer.needs_calibration:
        extra["mag_ratios"] = mag_ratios(job.loaded, job.recipe, probe.prompts[0], probe.seeds[0])
    tried = []
    for setting in peer.grid:
        with PeerMethod(job, name, setting, extra) as m:
            outs = [m.run(p, s) for p, s in zip(probe.prompts, probe.seeds)]
        scores = compute_metrics(["psnr"], [o[0].media[0] for o in outs], refs)
        tried.append({"setting": setting, "nfe": sum(o[1] for o in outs) / len(outs),
                      "psnr": sum(min(sc["psnr"], 100.0) for sc in scores) / len(scores)})
    pick = _pick(tried, target_nfe)
    n_matched = sum(target_nfe - 1 <= t["nfe"] <= target_nfe for t in tried)
    return {"setting": pick["setting"], "probe_nfe": pick["nfe"], "probe_psnr": pick["psnr"], "extra": extra,
            "tried": len(tried), "matched": n_matched}


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
    cal = job.calibration()
    probe = cal.subset(list(range(min(2, len(cal)))))
    refs = probe_refs(job, probe)
    rows = [{**method_row(job, samples, base_dir, PlanMethod(job, str(save_uniform(job, plan))),
                          "uniform cache", metrics), "setting": f"{plan.n_cached} cached, evenly spaced",
             "target_nfe": plan.nfe}]
    for name in available_peers():
        try:
            tuned = tune_peer(job, name, plan.nfe, probe, refs)
            method = PeerMethod(job, name, tuned["setting"], tuned["extra"])
            row = method_row(job, samples, base_dir, method, name, metrics)
        except (RuntimeError, ValueError, TypeError, AttributeError, UserError) as exc:
            rows.append({"method": name, "target_nfe": plan.nfe, "note": f"not run: {str(exc).splitlines()[0]}"})
            continue
        rows.append({**row, "setting": str(tuned["setting"]), "target_nfe": plan.nfe,
                     "grid": f"best of {tuned['matched']} matched / {tuned['tried']} tried", "note": PEERS[name].note})
    return rows
