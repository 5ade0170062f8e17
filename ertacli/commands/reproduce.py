"""reproduce: re-run a complete run directory and compare every output and record with the original.

Compared: every file of the run (media pixel by pixel, tensors bitwise, CSV and JSON field by field, anything
else byte by byte), files missing on either side included. Excluded, and said so in the report: the fields
declared as measurements (`MEASURED`: timings, memory, measured speedups), provenance fields (`PROVENANCE`:
creation times, paths of other runs, whether the run was resumed) and the files that only record the
environment or render a CSV (`SKIP_FILES`, `*.md`). A generate run (made directly, resumed, or by eval as its
baseline) is re-run from its own recorded inputs; any other run re-runs its recorded command line.

A run folder is data: the re-run happens in the current working folder (never the one argv.json records), writes
into the results folder holding the run, and a run whose recipe imports Python code (`model.adapter`) is re-run
only with `--trust-adapter`, after naming the file it will import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..runs.artifacts import read_json
from ..runs.guard import MARKER
from ..runs.rundir import INCOMPLETE, LOCK, TMP_PREFIX

SKIP_FILES = {"env.json", "argv.json", "resources.json", "command.txt", LOCK, INCOMPLETE, MARKER}
MEASURED = {"seconds", "transformer_seconds", "baseline_seconds", "speedup", "speedup_runs", "overhead",
            "latency_s", "baseline_latency_s", "peak_memory", "peak_rss"}
MEASURED_PREFIX = ("timing_", "peak_", "cpu_speedup")
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
    if a.is_symlink() or b.is_symlink():
        raise ValueError("a symbolic link, not a file the run wrote")
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
    return {str(f.relative_to(run)) for f in run.rglob("*")  # a link is listed, never read through
            if (f.is_symlink() or f.is_file()) and f.name not in SKIP_FILES and f.suffix != ".md"}


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


def adapter_gate(recipe, trust: bool, what: str) -> None:
    """Refuse a recipe that imports Python code (model.adapter) unless trusted; with trust, say which file."""
    if not recipe.model.adapter:
        return
    code = recipe.adapter_file() or recipe.adapter_spec()
    if not trust:
        raise UserError(f"{what} runs Python code: its recipe imports model.adapter {code}; check that file, then "
                        f"pass --trust-adapter to run it")
    from ..runs.console import say

    say(f"--trust-adapter: importing {code} (model.adapter of {what})", stderr=True)


def _recipe_gate(run_dir: Path, rec: dict, trust: bool) -> None:
    """The run's recorded recipe and the recipe its command line names: neither may import code untrusted."""
    from ..recipe import resolve_recipe

    if (run_dir / "recipe.yaml").is_file():
        adapter_gate(resolve_recipe(str(run_dir / "recipe.yaml")), trust, str(run_dir))
    argv = _absolute_args([str(a) for a in rec.get("argv", [])], rec.get("cwd"))
    for flag in ("--model", "-m"):
        if flag in argv[:-1]:
            try:
                recipe = resolve_recipe(argv[argv.index(flag) + 1])
            except UserError:
                continue  # the re-run cannot find it either: it fails with its own line, importing nothing
            adapter_gate(recipe, trust, str(run_dir))


def _absolute_args(args: list[str], recorded_cwd) -> list[str]:
    """Relative file arguments (a plan, a prompt file) that exist only beside the recorded working folder, made
    absolute so the re-run reads the same files without changing directory."""
    base = Path(str(recorded_cwd)) if recorded_cwd else None
    if base is None or not base.is_absolute() or not base.is_dir():
        return args
    out = []
    for a in args:
        if not a.startswith("-") and not os.path.isabs(a) and not os.path.exists(a) and (base / a).exists():
            a = str(base / a)
        out.append(a)
    return out


def _rerun(args: list[str], results: Path, what: str, trust: bool = False) -> None:
    env = {**os.environ, "ERTACACHE_RESULTS": str(results)}
    extra = ["--trust-adapter"] if trust and args[:1] == ["generate"] else []
    proc = subprocess.run([sys.executable, "-m", "ertacli", *args, *extra, "--quiet"], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise UserError(f"re-running {what} failed (exit {proc.returncode}): {' '.join(last)[:300]}")


def _rerun_generate(run_dir: Path, trust: bool) -> Path:
    """A fresh temporary run holding only the original's inputs, finished by `generate --resume`."""
    from ..runs import guard
    from ..runs.rundir import RunDir

    fresh = RunDir(run_dir.parent.name, "generate", [], results_dir=run_dir.parent.parent)
    fresh.tmp_path.mkdir(parents=True)
    guard.write_marker(fresh.tmp_path)
    for name in COPIED:
        src = run_dir / name
        if src.is_file() and not src.is_symlink():
            shutil.copyfile(src, fresh.tmp_path / name)
    try:
        _rerun(["generate", "--resume", str(fresh.tmp_path.resolve())], run_dir.parent.parent, run_dir.name, trust)
    except BaseException:
        guard.remove_tree(fresh.tmp_path, run_dir.parent.parent)
        raise
    return fresh.tmp_path.parent / fresh.run_name


def run_reproduce(run_dir: Path, trust_adapter: bool = False):
    """Re-run `run_dir` and compare; returns (new dir, table, all matched, exclusions note)."""
    import pandas as pd

    rec = _complete(run_dir)
    if not isinstance(rec, dict) or not isinstance(rec.get("argv"), list):
        raise UserError(f"{run_dir}/argv.json records no command line; it is not a complete run directory")
    _recipe_gate(run_dir, rec, trust_adapter)
    parent = run_dir.resolve().parent
    if run_dir.name.startswith("generate-") and (run_dir / "inputs.json").is_file():
        new = _rerun_generate(run_dir.resolve(), trust_adapter)
    else:
        args = [str(a) for a in rec["argv"][1:]]
        if args[:1] != [rec["command"]]:
            raise UserError(f"{run_dir.name} was made inside `ertacache {' '.join(args[:1])}` and records no command "
                            f"line of its own; reproduce the run that made it")
        before = {p.name for p in parent.iterdir()}
        _rerun(_absolute_args(args, rec.get("cwd")), parent.parent, run_dir.name)
        made = sorted(p for p in parent.iterdir() if p.name not in before and p.name.startswith(rec["command"] + "-"))
        if not made:
            raise UserError(f"re-running {run_dir.name} wrote no new {rec['command']} run under {parent}")
        new = made[-1]
    rows = compare_runs(run_dir, new)
    return new, pd.DataFrame(rows), bool(rows) and all(r["status"] == "match" for r in rows), exclusions_note()
