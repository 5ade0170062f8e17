"""Files inside run directories: JSON, tensors, finding earlier runs, and the peak-memory record."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..recipe import results_dir
from .rundir import RunDir, latest_run


def read_json(path: Path) -> dict:
    """A JSON file of a run directory; unreadable or malformed is a one-line error."""
    from ..limits import MAX_DEPTH, MAX_JSON_BYTES, depth, read_text_bounded

    try:
        data = json.loads(read_text_bounded(Path(path), MAX_JSON_BYTES, "run file"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__}: {str(exc)[:100]}); re-run the command that made it")
    if depth(data) > MAX_DEPTH:
        raise UserError(f"{path}: nested deeper than {MAX_DEPTH} levels; re-run the command that made it")
    return data


def find_run(recipe_name: str, command: str, marker: str, match: Callable[[dict], bool]) -> Path | None:
    """Newest complete run of `command` whose `marker` JSON file satisfies `match`."""
    def ok(p: Path) -> bool:
        f = p / marker
        if not f.is_file():
            return False
        try:
            return match(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            return False

    return latest_run(recipe_name, command, predicate=ok, results_dir=results_dir())


def save_tensors(path: Path, tensors: dict) -> None:
    """Write tensors as safetensors."""
    from safetensors.torch import save_file

    from .guard import target

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target(path)))


def load_tensors(path: Path) -> dict:
    """Read a run directory's safetensors file; a missing one says which run to redo."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing: the run directory is incomplete; re-run the command that made it")
    return load_file(str(path))


def peak_memory(device: str) -> dict:
    """Peak memory so far: CUDA max allocated (and reserved) on a GPU, else this process's peak RSS."""
    import resource

    if str(device).startswith("cuda"):
        import torch

        return {"kind": "cuda_max_memory_allocated", "device": str(device),
                "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_peak_rss", "device": str(device),
            "peak_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def write_resources(run: RunDir, device: str) -> dict:
    """Record peak memory into the run directory's resources.json (call just before the run completes)."""
    info = peak_memory(device)
    run.write_json("resources.json", info)
    return info
