"""runs: the incomplete (temporary) run directories, what each holds and how to resume it; clean the empty ones."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from ..recipe import results_dir
from ..runs.rundir import INCOMPLETE, TMP_PREFIX, lock_owner


def incomplete_runs(root: Path | None = None) -> list[dict]:
    """One row per `.tmp-*` folder under results/<recipe>/: status, finished samples, resume command."""
    root = Path(root) if root is not None else results_dir()
    rows = []
    for tmp in sorted(root.glob(f"*/{TMP_PREFIX}*")):
        if not tmp.is_dir():
            continue
        owner = lock_owner(tmp)
        kept = len(list((tmp / "records").glob("*.json")))
        resumable = tmp.name.startswith(f"{TMP_PREFIX}generate-") and (tmp / "inputs.json").is_file()
        if owner is not None:
            status = f"running (PID {owner})"
        elif resumable and kept:
            status = "interrupted" + (" (INCOMPLETE note)" if (tmp / INCOMPLETE).is_file() else " (killed)")
        else:
            status = "abandoned, holds no finished sample"
        rows.append({"recipe": tmp.parent.name, "run": str(tmp), "status": status, "finished_samples": kept,
                     "resume": f"ertacache generate --resume {shlex.quote(str(tmp))}" if resumable and kept else "-",
                     "cleanable": owner is None and not (resumable and kept)})
    return rows


def clean_runs(rows: list[dict]) -> list[str]:
    """Remove the cleanable folders (no live owner, no finished sample); returns what was removed."""
    removed = []
    for row in rows:
        if row["cleanable"]:
            shutil.rmtree(row["run"], ignore_errors=True)
            removed.append(row["run"])
    return removed
