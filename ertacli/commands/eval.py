"""eval: a generate run against the uncached baseline of the same prompts and seeds: quality, NFE, speedup.

Also the pieces every comparing command shares: the baseline run, the scored table row of a runner
(`result_row`), the uniform-cache run and the peers tuned to a plan's NFE (`peer_rows`).
"""

from __future__ import annotations

from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError, require_same
from ..plan import Plan
from ..runs.artifacts import find_run, read_json
from ..runs.job import Job
from .generate import GENERATE_FILE, load_outputs, run_generate, runner_for


def baseline_for(job: Job, samples: Samples) -> Path:
    """The newest uncached generate run of these samples on this device and dtype with this model (by content:
    its weights digest, not its path), made now if missing."""
    digest, weights = samples.digest(), job.model_identity.get("weights")

    def match(d: dict) -> bool:
        return (d.get("kind") == "baseline" and d.get("recipe_key") == job.key and d.get("device") == job.device
                and d.get("dtype") == job.recipe.model.dtype and d.get("samples", {}).get("digest") == digest
                and isinstance(d.get("model"), dict) and d["model"].get("weights") == weights)

    from ..dist import WORLD, broadcast

    found = find_run(job.recipe.name, "generate", GENERATE_FILE, match) if WORLD.main else None
    found = broadcast(str(found) if found else None)
    return Path(found) if found is not None else run_generate(job, samples, None)


def read_generate(path: Path, job: Job) -> tuple[dict, list[dict]]:
    """A generate run's record and sample rows, checked to belong to this recipe's settings."""
    import pandas as pd

    if not (path / GENERATE_FILE).is_file():
        raise UserError(f"{path} is not a generate run directory (no {GENERATE_FILE}); pass one with --run")
    info = read_json(path / GENERATE_FILE)
    if isinstance(info.get("settings"), dict):
        from ..plan_settings import check_settings

        check_settings(f"generate run {path}", info["settings"], info.get("model"), job.run_settings())
    else:
        require_same(f"generate run {path}", "model/sampling settings key", info.get("recipe_key"), job.key,
                     f"it predates recorded settings; re-run `ertacache generate --model {job.recipe.name}`")
    return info, pd.read_csv(path / "samples.csv").to_dict("records")


def score_runs(job: Job, cached_dir: Path, base_dir: Path, metric_names: list[str]):
    """Per-sample metrics and timings of a cached run against its baseline; returns (per-sample df, summary)."""
    from ..evaluation.scoring import score_samples

    info, rows = read_generate(cached_dir, job)
    _, base_rows = read_generate(base_dir, job)
    if [(r["prompt"], r["seed"]) for r in rows] != [(r["prompt"], r["seed"]) for r in base_rows]:
        raise UserError(f"{cached_dir} and baseline {base_dir} hold different prompts/seeds")
    per, summary = score_samples(rows, base_rows, load_outputs(cached_dir, rows), load_outputs(base_dir, base_rows),
                                 metric_names)
    return per, {"run": str(cached_dir), "baseline": str(base_dir), "plan": info.get("plan"), **summary}


def timed(job: Job, samples: Samples, runner, baseline=None, ideal: float | None = None) -> dict:
    """Paired timing of a runner against the uncached baseline (the recipe's rounds and samples), with its note."""
    from ..evaluation.runners import baseline_runner
    from ..evaluation.timing import paired_timing, timing_note

    baseline = baseline or baseline_runner(job.sampler, job.recipe.cache.residual)
    t = paired_timing(samples, runner, baseline, **job.timing(), cpu=str(job.device).startswith("cpu"))
    return {**t, "timing_note": timing_note(t["speedup"], t["speedup_q1"], t["speedup_q3"], ideal)}


CPU_COLUMNS = ("cpu_speedup", "cpu_speedup_q1", "cpu_speedup_q3")
"""The process-CPU-time speedup and its spread (timed on a CPU device only)."""


def result_row(job: Job, samples: Samples, base_dir: Path, runner, method: str, plan: Plan | None = None) -> dict:
    """Generate with a runner, score it against the baseline, time it: the one table row every command prints."""
    metrics = list(job.recipe.eval.metrics)
    _, s = score_runs(job, run_generate(job, samples, runner=runner), base_dir, metrics)
    s.update(timed(job, samples, runner, ideal=s["ideal_speedup"]))
    row = {"method": method}
    if plan is not None:
        row.update({"lambda": plan.lam, "cached_steps": plan.n_cached})
    row.update({"nfe": s["nfe"], "baseline_nfe": s["baseline_nfe"], "ideal_speedup": s["ideal_speedup"],
                "speedup": s["speedup"], "speedup_q1": s["speedup_q1"], "speedup_q3": s["speedup_q3"],
                "timing_note": s["timing_note"], **{k: s[k] for k in CPU_COLUMNS if k in s},
                **{m: s[m] for m in metrics}, "latency_s": s["timing_seconds"],
                "baseline_latency_s": s["timing_baseline_seconds"], "run": s["run"]})
    if plan is not None:
        row["phi 0/mid/1"] = phi_counts(plan)
        row["plan"] = str(plan.folder)
    return row


def phi_counts(plan: Plan) -> str | None:
    """How many cached steps have phi = 0, 0 < phi < 1 and phi = 1 in a plan with timestep adjustment."""
    ph = (plan.fit or {}).get("phi_summary") if plan.adjusted_sigmas is not None else None
    return f"{ph['zero']}/{ph['partial']}/{ph['one']}" if ph and ph.get("cached") else None


def plan_row(job: Job, samples: Samples, base_dir: Path, plan, method: str) -> dict:
    """`result_row` of a plan (a recorded Plan in memory, or a plan folder), checked against this job's model and
    settings."""
    from ..plan import check_plan, load_plan
    from ..runs.plan_runner import PlanRunner

    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    check_plan(plan, job.run_settings())
    return result_row(job, samples, base_dir, PlanRunner(job.sampler, plan), method, plan)


def save_uniform(job: Job, plan: Plan) -> Path:
    """Write the uniform counterpart of `plan` as its own run; returns the plan folder."""
    from ..runs.recorder import record_uniform

    return record_uniform(job.recorder, plan).folder


def teacache_extra(job: Job) -> tuple[dict, str]:
    """TeaCache's fitted polynomial (found or fitted now) and the row note naming its file and fit."""
    from .teacache_fit import find_or_make_teacache

    fit, path = find_or_make_teacache(job)
    return {"teacache": fit}, (f"{fit['input']}; coefficients from teacache-fit run {path.parent.name} "
                               f"(R2 {fit['r2']:.3f}, {fit['points']} points)")


PEER_INPUTS = {"TeaCache": teacache_extra}
"""Peers whose builds need a run-directory artifact: peer name -> (job) -> (extra, note)."""


def peer_row(job: Job, samples: Samples, base_dir: Path, name: str, plan, probe, refs) -> dict:
    """One peer tuned to the plan's NFE and run on the samples; or a row saying why it was not run."""
    from ..evaluation.peer_tuning import tune_peer
    from ..evaluation.peers import PEERS, why_missing
    from ..evaluation.runners import PeerRunner

    reason = why_missing(name)
    if reason is not None:
        return {"method": name, "target_nfe": plan.nfe, "note": f"not run: {reason}"}
    try:
        extra, note = PEER_INPUTS[name](job) if name in PEER_INPUTS else ({}, PEERS[name].note)
        tuned = tune_peer(job.sampler, name, plan.nfe, probe, refs, extra)
        if tuned.get("unreached"):
            return {"method": name, "target_nfe": plan.nfe, "note": tuned["unreached"],
                    "grid": f"none matched / {tuned['tried']} tried"}
        row = result_row(job, samples, base_dir, PeerRunner(job.sampler, name, tuned["setting"], tuned["extra"]), name)
    except (RuntimeError, ValueError, TypeError, AttributeError, UserError) as exc:
        return {"method": name, "target_nfe": plan.nfe, "note": f"not run: {str(exc).splitlines()[0]}"}
    return {**row, "setting": str(tuned["setting"]), "target_nfe": plan.nfe,
            "grid": f"best of {tuned['matched']} matched / {tuned['tried']} tried", "note": note}


def peer_rows(job: Job, samples: Samples, base_dir: Path, plan) -> list[dict]:
    """One row per registered peer (run, or why not) plus a uniform cache, all tuned to the plan's NFE (a Plan
    in memory, or a plan folder)."""
    from ..evaluation.peer_tuning import probe_refs
    from ..evaluation.peers import PEERS
    from ..plan import load_plan
    from ..runs.recorder import record_uniform

    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    probe = job.calibration().first(2)
    refs = probe_refs(job.sampler, probe, job.recipe.cache.residual)
    if plan.steps != job.recipe.sampling.steps:  # peers match the plan as this run's step count runs it
        from ..transfer import transfer_plan

        plan = transfer_plan(plan, [float(x) for x in getattr(job.sampler.pipe.scheduler, "sigmas", [])])
    rows = [{**plan_row(job, samples, base_dir, record_uniform(job.recorder, plan), "uniform cache"),
             "setting": f"{plan.n_cached} cached, evenly spaced", "target_nfe": plan.nfe}]
    return rows + [peer_row(job, samples, base_dir, name, plan, probe, refs) for name in PEERS]


def run_eval(job: Job, samples: Samples, plan_path: str | None = None, run_path: str | None = None,
             metrics: list[str] | None = None, with_peers: bool = False, vbench: bool = False):
    """Generate (if given a plan) and compare against the baseline; returns (eval run dir, summary, peer rows)."""
    import pandas as pd

    from ..evaluation.metrics import available
    from ..plan import find_plan_dir
    from ..runs.tables import save_table

    names = list(metrics or job.recipe.eval.metrics)
    unknown = [m for m in names if m not in available()]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)} in eval.metrics; available: {', '.join(available())}")
    if (plan_path is None) == (run_path is None):
        raise UserError("eval needs exactly one of --plan PLAN (generate now) or --run GENERATE_RUN")
    if run_path is not None:
        info, _ = read_generate(Path(run_path), job)
        samples = Samples(info["samples"]["prompts"], info["samples"]["seeds"])
    else:
        from ..plan import check_plan, load_plan

        check_plan(load_plan(plan_path), job.run_settings())  # before the baseline is generated
    base_dir = baseline_for(job, samples)
    cached_dir = Path(run_path) if run_path else run_generate(job, samples, plan_path)
    per, summary = score_runs(job, cached_dir, base_dir, names)
    if plan_path is not None:
        summary["speedup_runs"] = summary["speedup"]
        summary.update(timed(job, samples, runner_for(job, plan_path), ideal=summary["ideal_speedup"]))
        summary["overhead"] = summary["speedup"] / summary["ideal_speedup"]
    if vbench:
        summary.update(vbench_scores(cached_dir))
    peers = []
    if with_peers:
        peers = peer_rows(job, samples, base_dir, find_plan_dir(plan_path or read_json(cached_dir / GENERATE_FILE)["plan"]))
    with job.rundir("eval") as run:
        job.start(run, "eval", samples.seeds)
        save_table(per, run.path, "per_sample")
        save_table(pd.DataFrame([summary]), run.path, "summary")
        if peers:
            save_table(pd.DataFrame(peers), run.path, "peers")
        run.write_json("eval.json", {**summary, "peers": peers})
    return run.final_path, summary, peers


def vbench_scores(run_dir: Path) -> dict:
    """VBench's standard dimensions on a video run, or one 'missing: ...' entry saying what is absent."""
    from ..evaluation.perceptual import MetricUnavailable
    from ..evaluation.vbench import run_vbench

    try:
        return {f"vbench_{k}": v for k, v in run_vbench(run_dir).items()}
    except MetricUnavailable as exc:
        return {"vbench": f"missing: {exc}"}


def quality_gate(run_dir: Path, min_psnr: float | None, max_lpips: float | None) -> list[str]:
    """Why the eval run falls short (empty when it passes), followed by the failing samples."""
    import pandas as pd

    from ..evaluation.scoring import quality_gate as gate

    return gate(pd.read_csv(run_dir / "per_sample.csv"), min_psnr, max_lpips)
