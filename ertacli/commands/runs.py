"""runs: the incomplete (temporary) run directories, what each holds and how to resume it; clean the empty ones.

Only real folders are looked at (a symbolic link under results/ is never followed), and `--clean` removes only
folders carrying ertacache's marker (guard.MARKER), inside the results folder.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..recipe import results_dir
from ..runs.guard import is_marked, lock_owner, remove_tree
from ..runs.rundir import INCOMPLETE, TMP_PREFIX


def _temp_folders(root: Path) -> list[Path]:
    """`<root>/<recipe>/.tmp-*` folders, neither the recipe folder nor the run folder a link."""
    if not root.is_dir():
        return []
    found = []
    for recipe in sorted(root.iterdir()):
        if recipe.is_symlink() or not recipe.is_dir():
            continue
        found += [t for t in sorted(recipe.iterdir()) if t.name.startswith(TMP_PREFIX) and not t.is_symlink()
                  and t.is_dir()]
    return found


def incomplete_runs(root: Path | None = None) -> list[dict]:
    """One row per `.tmp-*` folder under results/<recipe>/: status, finished samples, resume command."""
    root = Path(root) if root is not None else results_dir()
    rows = []
    for tmp in _temp_folders(root):
        owner = lock_owner(tmp)
        records = tmp / "records"
        kept = 0 if records.is_symlink() else len([r for r in records.glob("*.json") if not r.is_symlink()])
        resumable = tmp.name.startswith(f"{TMP_PREFIX}generate-") and (tmp / "inputs.json").is_file()
        ours = is_marked(tmp)
        if owner is not None:
            status = f"running (PID {owner})"
        elif resumable and kept:
            status = "interrupted" + (" (INCOMPLETE note)" if (tmp / INCOMPLETE).is_file() else " (killed)")
        elif not ours:
            status = "not made by this ertacache (no marker): left alone"
        else:
            status = "abandoned, holds no finished sample"
        rows.append({"recipe": tmp.parent.name, "run": str(tmp), "status": status, "finished_samples": kept,
                     "resume": f"ertacache generate --resume {shlex.quote(str(tmp))}" if resumable and kept else "-",
                     "cleanable": ours and owner is None and not (resumable and kept)})
    return rows


def clean_runs(rows: list[dict], root: Path | None = None) -> list[str]:
    """Remove the cleanable folders (marked, no live owner, no finished sample); returns what was removed."""
    root = Path(root) if root is not None else results_dir()
    return [row["run"] for row in rows if row["cleanable"] and remove_tree(Path(row["run"]), root)]
