"""The one place a run's files are written and removed, and its lock taken.

Every write into a run folder goes through `target(path)`: a path inside a run folder this process has open
(`register`) is refused when it resolves outside that folder (`..`, an absolute name) or when the file or any
folder between the run folder and the file is a symbolic link, so a link planted in a run folder (a `grid.png`
pointing elsewhere) is never written through. `remove_tree` deletes only a real folder (never a link) inside a
given root that carries ertacache's own marker file (`MARKER`), written when the run folder is created.

The LOCK is a kernel lock (`flock`) on the LOCK file, taken without ever removing the file first: of two
processes taking a free or stale lock at once exactly one wins, and a killed owner's lock is free at once.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Optional

from ..errors import UserError

MARKER = ".ertacache-run"
LOCK = "LOCK"
MAX_LOCK_BYTES = 4096
_ROOTS: list[Path] = []  # run folders this process writes into (absolute, unresolved)
_HELD: dict[str, int] = {}  # LOCK path -> the open descriptor holding its flock


def _abs(path: str | os.PathLike) -> Path:
    """An absolute path without resolving links or `..` (those are what is checked)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def register(root: str | os.PathLike) -> None:
    """Writes under `root` are checked from now on (a run folder this process created or adopted)."""
    root = Path(os.path.abspath(root))
    if root not in _ROOTS:
        _ROOTS.append(root)


def unregister(root: str | os.PathLike) -> None:
    root = Path(os.path.abspath(root))
    if root in _ROOTS:
        _ROOTS.remove(root)


def _root_of(raw: Path) -> Optional[Path]:
    """The registered run folder `raw` is written into by its unnormalised parts (so `run/../x` counts)."""
    for root in sorted(_ROOTS, key=lambda r: -len(r.parts)):
        if raw.parts[:len(root.parts)] == root.parts:
            return root
    return None


def inside(root: str | os.PathLike, name: str, what: str = "file") -> Path:
    """`root / name` for a plain relative name inside `root` (no absolute path, no `..`, no NUL), else one line."""
    text = str(name)
    parts = Path(text).parts
    if not text or "\x00" in text or Path(text).is_absolute() or ".." in parts or len(text) > 255:
        raise UserError(f"{root}: {what} name {text[:80]!r} is not a plain name inside the run folder; the run "
                        f"folder was edited: re-run the command that made it")
    return Path(root) / text


def check_links(root: Path, path: Path) -> None:
    """Refuse `path` when it or a folder between `root` and it is a symbolic link, or it resolves outside `root`."""
    rel = path.parts[len(root.parts):]
    node = root
    for part in rel:
        node = node / part
        if part in ("..", ".") or node.is_symlink():
            why = "is a symbolic link" if node.is_symlink() else "leaves the run folder"
            raise UserError(f"refusing to write {path}: {node} {why} (a run folder's files are written in place, "
                            f"never through a link); remove it and retry")
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path.parent)]) != real_root:
        raise UserError(f"refusing to write {path}: it resolves outside the run folder {root}; remove the link")


def target(path: str | os.PathLike) -> Path:
    """The checked path of a file about to be written (parent folders created inside the run folder)."""
    raw = _abs(path)
    root = _root_of(raw)
    if root is not None:
        check_links(root, raw)
        raw.parent.mkdir(parents=True, exist_ok=True)
        check_links(root, raw)  # a folder made just now by another process cannot be a link either
    return raw


def write_marker(folder: Path) -> None:
    """Mark a folder as an ertacache run folder (what `runs --clean` and failure clean-up require to remove it)."""
    path = target(Path(folder) / MARKER)
    path.write_text(json.dumps({"tool": "ertacache", "kind": "run-folder"}) + "\n", encoding="utf-8")


def is_marked(folder: Path) -> bool:
    """True for a real folder (not a link) holding ertacache's marker as a regular file."""
    folder, marker = Path(folder), Path(folder) / MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        with open(marker, "rb") as fh:
            return json.loads(fh.read(1024)).get("tool") == "ertacache"
    except (OSError, ValueError, AttributeError):
        return False


def remove_tree(folder: Path, within: Path) -> bool:
    """Delete an ertacache run folder inside `within`; a link, a folder outside or one without the marker is kept."""
    folder = _abs(folder)
    real_within = os.path.realpath(within)
    if folder.is_symlink() or not is_marked(folder):
        return False
    if os.path.commonpath([real_within, os.path.realpath(folder)]) != real_within or \
            os.path.realpath(folder) == real_within:
        return False
    unregister(folder)
    shutil.rmtree(folder, ignore_errors=True)  # rmtree never follows links inside the folder
    return True


def _read_lock(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, MAX_LOCK_BYTES) or b"{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _other_host(info: dict) -> Optional[int]:
    """The PID of a lock recorded by another machine (cannot be checked here, so counted as alive)."""
    host = info.get("host")
    if host and host != platform.node():
        try:
            return int(info.get("pid"))
        except (TypeError, ValueError):
            return -1
    return None


def _open_lock(lock: Path, flags: int) -> int:
    try:
        return os.open(lock, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        if lock.is_symlink():
            raise UserError(f"{lock} is a symbolic link; remove it (a run's lock is a plain file)") from None
        raise


def lock_owner(folder: Path) -> Optional[int]:
    """PID of the live process holding a run folder's lock (another machine's counts as live), else None."""
    import fcntl

    lock = Path(folder) / LOCK
    if lock.is_symlink() or not lock.is_file() or os.path.abspath(lock) in _HELD:
        return None
    try:
        fd = _open_lock(lock, os.O_RDONLY)
    except (OSError, UserError):
        return None
    try:
        info = _read_lock(fd)
        other = _other_host(info)
        if other is not None:
            return other
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: a stale LOCK file
        except BlockingIOError:
            pid = info.get("pid")
            return int(pid) if isinstance(pid, int) else -1
    finally:
        os.close(fd)


def _busy(folder: Path, owner) -> UserError:
    return UserError(f"{folder} is in use by process {owner} (its {LOCK} file); wait for it to finish or stop it, "
                     f"then retry")


def take_lock(folder: Path) -> None:
    """Own a run folder: flock its LOCK (created if absent, never removed first) and record this PID in it."""
    import fcntl

    lock = Path(os.path.abspath(Path(folder) / LOCK))
    for _ in range(5):
        fd = _open_lock(target(lock), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_lock(fd)
            os.close(fd)
            raise _busy(folder, info.get("pid", "unknown")) from None
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder finished and removed it between our open and flock: take the new file
            os.close(fd)
            continue
        other = _other_host(_read_lock(fd))
        if other is not None:
            os.close(fd)
            raise _busy(folder, other)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node()}).encode())
        _HELD[str(lock)] = fd
        return
    raise _busy(folder, "unknown")


def release_lock(folder: Path) -> None:
    """Give a run folder's lock back: remove the LOCK file this process holds, then drop the flock."""
    lock = Path(os.path.abspath(Path(folder) / LOCK))
    fd = _HELD.pop(str(lock), None)
    if fd is None:
        return
    try:
        if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            lock.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def moved(old: Path, new: Path) -> None:
    """A registered run folder was renamed: its writes are checked under the new name."""
    unregister(old)
    register(new)
