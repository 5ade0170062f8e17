"""teacache-fit: TeaCache's polynomial for this recipe, fitted on its calibration samples -> teacache.json."""

from __future__ import annotations

from pathlib import Path

from ..runs.artifacts import find_run, read_json
from ..runs.job import Job

TEACACHE_FILE = "teacache.json"


def run_teacache_fit(job: Job) -> Path:
    """Record (x_rel, y_rel) on the calibration samples uncached, fit degree 4, write teacache.json + records.csv."""
    import pandas as pd

    from ..evaluation.teacache import modulated_input_kind
    from ..evaluation.teacache_fit import fit_teacache
    from ..runs.tables import save_table

    samples = job.calibration()
    with job.rundir("teacache-fit") as run:
        job.start(run, "teacache-fit", samples.seeds)
        fit, records = fit_teacache(job.sampler, samples)
        run.write_json(TEACACHE_FILE, {"recipe": job.recipe.name, "recipe_key": job.key,
                                       "calibration": {"digest": samples.digest(), "samples": len(samples)},
                                       "input": modulated_input_kind(job.sampler.transformer), **fit})
        save_table(pd.DataFrame(records, columns=["branch", "step", "x_rel", "y_rel"]), run.path, "records")
    return job.finished(run) / TEACACHE_FILE


def find_or_make_teacache(job: Job) -> tuple[dict, Path]:
    """The newest teacache.json fitted with this recipe's settings and calibration set, made now if missing."""
    digest = job.calibration().digest()

    def match(d: dict) -> bool:
        return d.get("recipe_key") == job.key and d.get("calibration", {}).get("digest") == digest

    found = find_run(job.recipe.name, "teacache-fit", TEACACHE_FILE, match)
    path = found / TEACACHE_FILE if found is not None else run_teacache_fit(job.as_command("teacache-fit"))
    return read_json(path), path
