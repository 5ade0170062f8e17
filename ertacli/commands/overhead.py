"""overhead: what a cached step costs, measured against the uncached pipeline in one run.

For each cache ratio and predictor (reuse; extrapolation of order 1 and 2, gain 1), a cache of that share
of every branch's steps, evenly spaced (docs/method.md "Uniform cache"), is timed against the uncached pipeline with eval's
paired timing (alternating calls after a warm-up round). The table gives the ideal speedup (the NFE ratio), the
measured one and their ratio, and the transformer's share of the uncached call: the part a cache can remove.
No plan is calibrated and no quality is scored, so the command needs no profile and runs as well on random
weights at a backbone's full size (recipes `*-random`, built in code) as on the real weights.
"""

from __future__ import annotations

from ..calibration.samples import Samples
from ..errors import UserError
from ..runs.job import Job

PREDICTORS = {  # label -> cache.predictor settings (gain 1, step-index abscissa: the same arithmetic as sigma)
    "reuse": {"kind": "reuse"},
    "extrapolate-1": {"kind": "extrapolate", "order": 1, "abscissa": "index", "c": 1.0},
    "extrapolate-2": {"kind": "extrapolate", "order": 2, "abscissa": "index", "c": 1.0},
}


def cached_counts(T: int, ratios: list[float]) -> list[int]:
    """Cached steps per branch for each ratio (rounded); a uniform cache keeps at least 2 steps computed."""
    out = []
    for r in ratios:
        if not 0 < r < 1:
            raise UserError(f"--ratio {r}: a cache ratio is a share of the steps, between 0 and 1 (e.g. 0.5)")
        n = round(r * T)
        if n < 1 or T - n < 2:
            raise UserError(f"--ratio {r} caches {n} of {T} steps; a uniform cache needs 1 to {T - 2} cached steps")
        out.append(n)
    return out


def uncalibrated_plan(job: Job, n_cached: int, predictor: str):
    """A plan with no calibration: `n_cached` evenly spaced cached steps on every branch, one predictor."""
    from ..calibration.uniform import uniform_plan
    from ..plan import Plan, model_id

    branches = list(job.loaded.backbone.branches)
    empty = Plan(recipe=job.recipe.name, recipe_key=job.key, model_id=model_id(job.recipe),
                 steps=job.recipe.sampling.steps, scheduler={}, residual=job.recipe.cache.residual, base_sigmas=[],
                 branches=branches, cached_steps={}, sample_shape={}, calibration={},
                 predictor=dict(PREDICTORS[predictor]))
    return uniform_plan(empty, {b: n_cached for b in branches})


def time_uniform(job: Job, samples: Samples, n_cached: int, predictor: str, baseline) -> dict:
    """Paired timing of one uniform cache (whole call and inside the transformer); NFE as counted in its last call."""
    from ..runs.plan_runner import PlanRunner
    from .eval import timed

    runner = PlanRunner(job.sampler, uncalibrated_plan(job, n_cached, predictor))
    t = timed(job, samples, runner, baseline)
    nfe, n_cached_calls = runner.last_stats["nfe"], runner.last_stats["cached"]
    return {"predictor": predictor, "cached_per_branch": n_cached, "nfe": nfe, "cached_calls": n_cached_calls,
            "baseline_seconds": t["timing_baseline_seconds"], "cached_seconds": t["timing_seconds"],
            "speedup": t["speedup"], "speedup_q1": t["speedup_q1"], "speedup_q3": t["speedup_q3"],
            "transformer_baseline_seconds": t["transformer_baseline_seconds"],
            "transformer_seconds": t["transformer_seconds"], "transformer_speedup": t["transformer_speedup"],
            "timing_calls": t["timing_calls"]}


def run_overhead(job: Job, ratios: list[float], predictors: list[str]) -> tuple:
    """Time every (ratio, predictor) against the baseline; returns (run dir, table)."""
    import pandas as pd

    from ..evaluation.runners import baseline_runner
    from ..evaluation.timing import timing_note
    from ..runs.artifacts import peak_memory, write_resources
    from ..runs.tables import save_table

    unknown = [p for p in predictors if p not in PREDICTORS]
    if unknown:
        raise UserError(f"--predictors {unknown[0]!r}: choose from {', '.join(PREDICTORS)}")
    counts = cached_counts(job.recipe.sampling.steps, ratios)
    samples = job.eval_samples().first(job.recipe.eval.timing_samples)
    baseline = baseline_runner(job.sampler, job.recipe.cache.residual)
    with baseline as m:
        _, nfe0, _ = m.run(samples.prompts[0], samples.seeds[0])
    rows = []
    for n in counts:
        for p in predictors:
            r = time_uniform(job, samples, n, p, baseline)
            ideal = nfe0 / r["nfe"]
            r.update({"baseline_nfe": nfe0, "ideal_speedup": ideal, "of_ideal": r["speedup"] / ideal,
                      "timing_note": timing_note(r["speedup"], r["speedup_q1"], r["speedup_q3"], ideal),
                      "transformer_of_ideal": r["transformer_speedup"] / ideal,
                      "transformer_share": r["transformer_baseline_seconds"] / r["baseline_seconds"]})
            rows.append(r)
    table = pd.DataFrame(rows)
    with job.rundir("overhead") as run:
        job.start(run, "overhead", samples.seeds)
        save_table(table, run.path, "overhead")
        run.write_json("overhead.json", {"recipe": job.recipe.name, "device": job.device, "ratios": ratios,
                                         "predictors": predictors, "samples": samples.to_json(), "rows": rows,
                                         "peak_memory": peak_memory(job.device)})
        write_resources(run, job.device)
    short = {"cached_per_branch": "cached", "baseline_nfe": "nfe0", "ideal_speedup": "ideal",
             "of_ideal": "of ideal", "transformer_speedup": "tf speedup", "transformer_of_ideal": "tf of ideal",
             "transformer_share": "tf share"}
    cols = ["predictor", "cached_per_branch", "nfe", "baseline_nfe", "ideal_speedup", "speedup", "of_ideal",
            "transformer_speedup", "transformer_of_ideal", "transformer_share", "timing_note"]
    return job.finished(run), table[cols].rename(columns=short)
