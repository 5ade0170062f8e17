"""Run directories: written under a temp name, renamed atomically when complete."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import secrets
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..assets import checkout_root
from ..errors import UserError
from ..recipe import results_dir as default_results_dir
from . import guard
from .guard import LOCK, MARKER, lock_owner, release_lock, take_lock  # noqa: F401  (the run-folder API)

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TMP_PREFIX = ".tmp-"
_PACKAGES = ("torch", "diffusers", "transformers", "ertacache", "numpy")


def _utc_stamp() -> str:
    """Current UTC time as a compact stamp."""
    return datetime.now(timezone.utc).strftime(STAMP_FORMAT)


def _check_component(kind: str, value: str) -> str:
    """Refuse names that cannot be one folder-name component (letters, digits, '-', '_', '.'; at most 100)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", value or "") or value in (".", ".."):
        raise UserError(f"{kind} {str(value)[:60]!r} cannot be used as a folder name; use letters, digits, '-' or "
                        f"'_' (at most 100)")
    return value


def _json_default(obj: Any) -> Any:
    """JSON encoding for paths, numpy/torch scalars and arrays, and sets."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return str(obj)


def _sanitize(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def _is_clean_exit(exc: Optional[BaseException]) -> bool:
    """True when no exception, or a typer/click/SystemExit exit with code 0."""
    if exc is None:
        return True
    code = getattr(exc, "exit_code", None)
    if code is None and isinstance(exc, SystemExit):
        code = exc.code if exc.code is not None else 0
    return code == 0


INCOMPLETE = "INCOMPLETE"


class RunDir:
    """Context manager for one run's output folder under results/<recipe>/."""

    def __init__(self, recipe_name: str, command: str, argv: Iterable[str],
                 results_dir: str | Path | None = None, resumable: bool = False,
                 existing: str | Path | None = None, lead: bool = True) -> None:
        """Plan the temp and final names; nothing is created until entered.

        resumable: a failure or interruption that leaves finished samples (records/*.json) keeps the temp folder,
        marked INCOMPLETE with the reason and the resume command; existing: adopt that temp folder (resume);
        lead=False: another process (rank 0) creates and renames it.
        """
        self.recipe_name = _check_component("recipe name", recipe_name)
        self.command = _check_component("command", command)
        self.argv = [str(a) for a in argv]
        self.root = Path(results_dir) if results_dir is not None else default_results_dir()
        self.resumable, self.lead, self.existing = resumable, lead, existing is not None
        self.stamp = _utc_stamp()
        self.token = secrets.token_hex(3)
        self.run_name = f"{command}-{self.stamp}-{self.token}"
        self.tmp_path = self.root / recipe_name / f"{TMP_PREFIX}{self.run_name}"
        if existing is not None:
            self.tmp_path = Path(existing)
            self.run_name = self.tmp_path.name[len(TMP_PREFIX):]
        self.path = self.tmp_path
        self.final_path: Optional[Path] = None
        self.on_finish: list = []  # callables run just before a successful run is renamed into place

    def __enter__(self) -> "RunDir":
        """Create the temp folder (or adopt an existing one) and take its lock."""
        if self.lead and not self.existing:
            self.tmp_path.mkdir(parents=True, exist_ok=False)
        if self.tmp_path.is_symlink() or not self.tmp_path.is_dir():
            raise UserError(f"{self.tmp_path} is not a run folder (a link or not a folder); give the folder itself")
        guard.register(self.tmp_path)
        if self.lead:
            try:
                if not self.existing:
                    guard.write_marker(self.tmp_path)
                take_lock(self.tmp_path)
            except BaseException:
                guard.unregister(self.tmp_path)
                if not self.existing:
                    guard.remove_tree(self.tmp_path, self.tmp_path.parent)
                raise
            if (self.tmp_path / INCOMPLETE).is_file() and not (self.tmp_path / INCOMPLETE).is_symlink():
                (self.tmp_path / INCOMPLETE).unlink()
            if not guard.is_marked(self.tmp_path):
                guard.write_marker(self.tmp_path)  # a run the user named to resume, made before markers existed
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Rename to the final name on success; on failure keep finished samples (INCOMPLETE), else remove."""
        if not self.lead:
            return False
        if not _is_clean_exit(exc):
            self._failed(exc)
            return False
        try:
            for fn in self.on_finish:
                fn()
            self.write_text("command.txt", shlex.join(self.argv) + "\n")
            final = self.tmp_path.parent / self.run_name
            release_lock(self.tmp_path)
            os.rename(self.tmp_path, final)
            guard.moved(self.tmp_path, final)
        except BaseException as late:
            self._failed(late)
            raise
        self.final_path = final
        self.path = final
        return False

    def finished_count(self) -> int:
        """Finished samples held by the temp folder (their records), 0 for a non-resumable run."""
        return len(list((self.tmp_path / "records").glob("*.json"))) if self.resumable else 0

    def resume_command(self) -> str:
        return f"ertacache {self.command} --resume {shlex.quote(str(self.tmp_path))}"

    def _failed(self, exc: BaseException) -> None:
        """Keep a run holding finished samples, marked INCOMPLETE (why, and how to resume); remove any other."""
        kept = self.finished_count()
        if kept == 0:
            release_lock(self.tmp_path)
            guard.remove_tree(self.tmp_path, self.tmp_path.parent)
            note = "nothing was finished, so the run directory was removed"
        else:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            note = f"kept {kept} finished sample(s) in {self.tmp_path}; resume with: {self.resume_command()}"
            try:
                note_file = guard.target(self.tmp_path / INCOMPLETE)
                note_file.write_text(f"reason: {reason}\nkept: {kept} finished sample(s)\n"
                                     f"resume: {self.resume_command()}\n", encoding="utf-8")
            except (OSError, UserError):
                pass  # a full disk: the records still say what is done, `ertacache runs` names the command
            release_lock(self.tmp_path)
        try:
            exc.ertacache_note = note  # cli.main prints it on the error's line
        except AttributeError:
            pass

    def file(self, name: str) -> Path:
        """Path of a file inside the run folder (parent folders created; no link, nothing outside: guard.py)."""
        return guard.target(guard.inside(self.path, name))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write obj as indented JSON (NaN/inf as null) and return its path."""
        path = self.file(name)
        text = json.dumps(_sanitize(obj), indent=2, default=_json_default, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file and return its path."""
        path = self.file(name)
        path.write_text(text, encoding="utf-8")
        return path

    def subdir(self, name: str) -> Path:
        """Create and return a subfolder of the run folder."""
        path = guard.target(guard.inside(self.path, name, "folder"))
        path.mkdir(parents=True, exist_ok=True)
        return path


def _version(pkg: str) -> Optional[str]:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> Optional[str]:
    """Output of a git command in the checkout this package runs from, or None (no git, or an installed package)."""
    root = checkout_root()
    if root is None:
        return None
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def env_info(device: Any, dtype: Any, seeds: Iterable[int]) -> dict[str, Any]:
    """Environment record for a run: versions, git state, device, dtype, seeds, time."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit is not None else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {pkg: _version(pkg) for pkg in _PACKAGES},
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "seeds": [int(s) for s in seeds],
        "utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def latest_run(recipe_name: str, command: str, predicate: Optional[Callable[[Path], bool]] = None,
               results_dir: str | Path | None = None) -> Optional[Path]:
    """Newest complete run folder of a command for a recipe (temp folders skipped)."""
    root = Path(results_dir) if results_dir is not None else default_results_dir()
    base = root / recipe_name
    if not base.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(command)}-(\d{{8}}T\d{{6}}Z)-[0-9a-f]{{6}}$")
    found = []
    for entry in base.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found.append((match.group(1), entry.stat().st_mtime_ns, entry.name, entry))
    for *_, entry in sorted(found, reverse=True):
        if predicate is None or predicate(entry):
            return entry
    return None
