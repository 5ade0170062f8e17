"""reproduce: re-run a complete run directory and compare every output and record with the original.

Compared: every file of the run (media pixel by pixel, tensors bitwise, CSV and JSON field by field, anything
else byte by byte), files missing on either side included. Excluded, and said so in the report: the fields
declared as measurements (`MEASURED`: timings, memory, measured speedups), provenance fields (`PROVENANCE`:
creation times, paths of other runs, whether the run was resumed) and the files that only record the
environment or render a CSV (`SKIP_FILES`, `*.md`). A generate run (made directly, resumed, or by eval as its
baseline) is re-run from its own recorded inputs; any other run re-runs its recorded command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..runs.artifacts import read_json
from ..runs.rundir import INCOMPLETE, LOCK, TMP_PREFIX

SKIP_FILES = {"env.json", "argv.json", "resources.json", "command.txt", LOCK, INCOMPLETE}
MEASURED = {"seconds", "transformer_seconds", "baseline_seconds", "speedup", "speedup_runs", "overhead",
            "latency_s", "baseline_latency_s", "peak_memory", "peak_rss"}
MEASURED_PREFIX = ("timing_", "peak_")
MEASURED_SUFFIX = ("_seconds", "_latency_s", "_bytes")
PROVENANCE = {"created_at", "utc_time", "profile_run", "plan", "run", "baseline", "source_plan", "cwd", "resumed"}
COPIED = ("inputs.json", "recipe.yaml", "argv.json", "env.json")  # what a generate re-run starts from


def excluded(key: str) -> bool:
    """A measurement or provenance field, never compared."""
    return key in MEASURED or key in PROVENANCE or key.startswith(MEASURED_PREFIX) or key.endswith(MEASURED_SUFFIX)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not excluded(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _same(a: Path, b: Path) -> bool:
    """Exact comparison by kind: tensors bitwise, images pixel by pixel, CSV/JSON without excluded fields."""
    if a.suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
    if a.suffix == ".png":
        import numpy as np
        from PIL import Image

        with Image.open(a) as ia, Image.open(b) as ib:
            return ia.mode == ib.mode and np.array_equal(np.asarray(ia), np.asarray(ib))
    if a.suffix == ".json":
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    if a.suffix == ".csv":
        import pandas as pd

        da, db = (pd.read_csv(f, dtype=str, keep_default_na=False) for f in (a, b))
        da, db = (d[[c for c in d.columns if not excluded(c)]] for d in (da, db))
        return list(da.columns) == list(db.columns) and da.equals(db)
    return a.read_bytes() == b.read_bytes()


def _files(run: Path) -> set[str]:
    return {str(f.relative_to(run)) for f in run.rglob("*")
            if f.is_file() and f.name not in SKIP_FILES and f.suffix != ".md"}


def compare_runs(old: Path, new: Path) -> list[dict]:
    """One row per file of either run: match, differs (with the reason when unreadable), or only on one side."""
    rows = []
    a, b = _files(old), _files(new)
    for rel in sorted(a | b):
        if rel not in b:
            status = "only in the original (missing from the re-run)"
        elif rel not in a:
            status = "only in the re-run (missing from the original)"
        else:
            try:
                status = "match" if _same(old / rel, new / rel) else "differs"
            except Exception as exc:  # any unreadable or corrupt file is a difference, never a traceback
                status = f"differs: {rel} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        rows.append({"file": rel, "status": status})
    return rows


def exclusions_note() -> str:
    """The report's line on what was not compared."""
    return (f"not compared (measurements): {', '.join(sorted(MEASURED))} and fields {'*, '.join(MEASURED_PREFIX)}*, "
            f"*{', *'.join(MEASURED_SUFFIX)}; (provenance): {', '.join(sorted(PROVENANCE))}; "
            f"files: {', '.join(sorted(SKIP_FILES - {LOCK, INCOMPLETE}))}, *.md (renderings of the CSVs)")


def _complete(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory")
    if run_dir.name.startswith(TMP_PREFIX) or (run_dir / INCOMPLETE).exists():
        raise UserError(f"{run_dir} is an incomplete temporary run; finish it first (`ertacache runs` names the "
                        f"resume command), then reproduce the final directory")
    try:
        return read_json(run_dir / "argv.json")
    except (OSError, ValueError, UserError) as exc:
        raise UserError(f"{run_dir} is not a complete run directory (argv.json unreadable: {exc})")


def _rerun(args: list[str], cwd: str, what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ertacli", *args, "--quiet"], cwd=cwd, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise UserError(f"re-running {what} failed (exit {proc.returncode}): {' '.join(last)[:300]}")


def _rerun_generate(run_dir: Path, cwd: str) -> Path:
    """A fresh temporary run holding only the original's inputs, finished by `generate --resume`."""
    from ..runs.rundir import RunDir

    fresh = RunDir(run_dir.parent.name, "generate", [], results_dir=run_dir.parent.parent)
    fresh.tmp_path.mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, fresh.tmp_path / name)
    try:
        _rerun(["generate", "--resume", str(fresh.tmp_path.resolve())], cwd, run_dir.name)
    except BaseException:
        shutil.rmtree(fresh.tmp_path, ignore_errors=True)
        raise
    return fresh.tmp_path.parent / fresh.run_name


def run_reproduce(run_dir: Path):
    """Re-run `run_dir` and compare; returns (new dir, table, all matched, exclusions note)."""
    import pandas as pd

    rec = _complete(run_dir)
    parent = run_dir.resolve().parent
    cwd = rec.get("cwd") if Path(str(rec.get("cwd"))).is_dir() else "."
    if run_dir.name.startswith("generate-") and (run_dir / "inputs.json").is_file():
        new = _rerun_generate(run_dir.resolve(), cwd)
    else:
        args = [str(a) for a in rec["argv"][1:]]
        if args[:1] != [rec["command"]]:
            raise UserError(f"{run_dir.name} was made inside `ertacache {' '.join(args[:1])}` and records no command "
                            f"line of its own; reproduce the run that made it")
        before = {p.name for p in parent.iterdir()}
        _rerun(args, cwd, run_dir.name)
        made = sorted(p for p in parent.iterdir() if p.name not in before and p.name.startswith(rec["command"] + "-"))
        if not made:
            raise UserError(f"re-running {run_dir.name} wrote no new {rec['command']} run under {parent}")
        new = made[-1]
    rows = compare_runs(run_dir, new)
    return new, pd.DataFrame(rows), bool(rows) and all(r["status"] == "match" for r in rows), exclusions_note()
