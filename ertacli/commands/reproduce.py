"""reproduce: re-run a run directory's exact command and compare its outputs file by file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..runs.artifacts import read_json

SKIP_JSON = {"env.json", "argv.json", "resources.json"}
VOLATILE = {"created_at", "seconds", "baseline_seconds", "transformer_seconds", "speedup", "utc_time", "profile_run", "plan", "run",
            "baseline", "source_plan", "cwd"}


def _strip(obj):
    """Drop keys that name times, paths of other runs or creation stamps."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _same(a: Path, b: Path) -> bool:
    """Exact comparison by kind: tensors bitwise, images pixel by pixel, JSON without volatile keys."""
    if a.suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    if a.suffix == ".png":
        import numpy as np
        from PIL import Image

        return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))


def compare_runs(old: Path, new: Path) -> list[dict]:
    """One row per output file: match, differs, or missing in the re-run."""
    rows = []
    for f in sorted(old.rglob("*")):
        if f.suffix not in (".safetensors", ".png", ".json") or f.name in SKIP_JSON:
            continue
        rel = f.relative_to(old)
        g = new / rel
        status = "missing" if not g.is_file() else ("match" if _same(f, g) else "differs")
        rows.append({"file": str(rel), "status": status})
    return rows


def run_reproduce(run_dir: Path):
    """Re-run `run_dir`'s command from its recorded working directory; returns (new dir, table, all matched)."""
    import pandas as pd

    if not (run_dir / "argv.json").is_file():
        raise UserError(f"{run_dir} is not a complete run directory (no argv.json)")
    rec = read_json(run_dir / "argv.json")
    parent = run_dir.resolve().parent
    before = {p.name for p in parent.iterdir()}
    proc = subprocess.run([sys.executable, "-m", "ertacli", *rec["argv"][1:], "--quiet"], cwd=rec["cwd"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"re-running {run_dir.name} failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    made = sorted(p for p in parent.iterdir() if p.name not in before and p.name.startswith(rec["command"] + "-"))
    if not made:
        raise UserError(f"re-running {run_dir.name} wrote no new {rec['command']} run under {parent}")
    rows = compare_runs(run_dir, made[-1])
    return made[-1], pd.DataFrame(rows), bool(rows) and all(r["status"] == "match" for r in rows)
