"""Model identity by content: the transformer's class, its config and a digest of its weights.

A model is known by what it computes, not by the path string it was loaded from: the same folder behind another
path string is the same model, another model's weights behind the same path string are not. The weights digest
is sha256 over the transformer's state dict as loaded (sorted names, dtype, shape and bytes), so a pipeline loaded
in Python and the one the CLI loads from the same folder in the same dtype give the same digest. For a model
folder (local, or a hub snapshot) the identity is cached per folder, keyed by its files' size, mtime, ctime and
inode and by the dtype, so a large model is hashed once (`$ERTACACHE_CACHE`, default ~/.cache/ertacache).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "ERTACACHE_CACHE"
CACHE_FORMAT = 1
CHUNK = 1 << 26  # elements hashed per device-to-host copy (bounded host memory on a large model)


def unwrap(module: Any) -> Any:
    """The module inside a torch.compile wrapper (OptimizedModule keeps it as `_orig_mod`)."""
    return getattr(module, "_orig_mod", module)


def transformer_config(transformer: Any) -> dict:
    """The transformer's public config (diffusers' `config` without `_`-keys), JSON-normalised."""
    cfg = getattr(unwrap(transformer), "config", None)
    try:
        data = dict(cfg) if cfg is not None else {}
    except (TypeError, ValueError):
        data = {}
    public = {str(k): v for k, v in data.items() if not str(k).startswith("_")}
    return json.loads(json.dumps(public, sort_keys=True, default=str))


def digest(data: Any) -> str:
    """First 16 hex of the sha256 of canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_bytes(t: Any):
    """A tensor's raw bytes as a buffer, in chunks (CPU copies of at most CHUNK elements)."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    for chunk in flat.split(CHUNK):
        host = chunk.to("cpu")
        try:
            yield host.view(torch.uint8).numpy()
        except (RuntimeError, TypeError):  # a dtype without a byte view (quantised): its float values
            yield host.to(torch.float64).numpy()


def weights_digest(transformer: Any) -> str | None:
    """sha256 of the state dict (names in order, dtype, shape, bytes); None when weights are offloaded (meta)."""
    state = unwrap(transformer).state_dict()
    h = hashlib.sha256()
    for name in sorted(state, key=lambda n: n.replace("_orig_mod.", "")):
        t = state[name]
        if getattr(t, "device", None) is not None and t.device.type == "meta":
            return None
        h.update(f"{name.replace('_orig_mod.', '')}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        for buf in _tensor_bytes(t):
            h.update(buf)
    return h.hexdigest()


def dtype_name(transformer: Any) -> str | None:
    """The transformer's dtype as a recipe writes it ("float32", "bfloat16", ...)."""
    dt = getattr(unwrap(transformer), "dtype", None)
    return str(dt).removeprefix("torch.") if dt is not None else None


def identity_of(transformer: Any, weights: bool = True, source: str | None = None) -> dict:
    """{"transformer": class, "config": ..., "config_digest": ..., "dtype": ..., "weights": sha256 | None, "source"}.

    weights=False skips the digest (what the API's per-call check compares: class and config only).
    """
    inner = unwrap(transformer)
    config = transformer_config(inner)
    return {"transformer": type(inner).__name__, "config": config, "config_digest": digest(config),
            "dtype": dtype_name(inner), "weights": weights_digest(inner) if weights else None, "source": source}


def weights_folder(transformer: Any) -> Path | None:
    """The local folder a diffusers model was loaded from (its config's `_name_or_path`), if it is one."""
    cfg = getattr(unwrap(transformer), "config", None)
    name = getattr(cfg, "_name_or_path", None) if cfg is not None else None
    if not name:
        return None
    path = Path(str(name)).expanduser()
    return path if path.is_dir() else None


def model_folder(root: str | Path) -> Path:
    """Where a pipeline folder keeps its transformer's files (`transformer/`), or the folder itself."""
    root = Path(root)
    return root / "transformer" if (root / "transformer").is_dir() else root


def _stats(folder: Path) -> list[list]:
    """(name, size, mtime_ns, ctime_ns, inode) of every regular file directly in the folder."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=True):
            st = entry.stat(follow_symlinks=True)
            out.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def cache_dir() -> Path:
    """$ERTACACHE_CACHE, else $XDG_CACHE_HOME/ertacache, else ~/.cache/ertacache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ertacache"


def _cache_file(folder: Path, dtype: str) -> Path:
    key = hashlib.sha256(f"{folder}\0{dtype}".encode()).hexdigest()[:24]
    return cache_dir() / "identity" / f"{key}.json"


def _read_cache(path: Path, expect: dict) -> dict | None:
    try:
        data = json.loads(path.read_bytes()[: 1 << 20])
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in expect.items()):
        return None
    found = data.get("identity")
    return found if isinstance(found, dict) and found.get("weights") else None


def _write_cache(path: Path, entry: dict) -> None:
    """Best effort (a read-only home only costs a re-hash next time): write under a temporary name, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_text(json.dumps(entry, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def folder_identity(root: str | Path, dtype: str, compute: Callable[[], dict]) -> dict:
    """The identity of the model in folder `root` loaded in `dtype`: cached while its files are unchanged, else
    `compute()` (which loads the model and hashes it) and cached."""
    folder = model_folder(Path(root).expanduser().resolve())
    try:
        stats = _stats(folder)
    except OSError:
        return compute()
    from . import __version__

    expect = {"format": CACHE_FORMAT, "folder": str(folder), "dtype": dtype, "files": stats, "tool": __version__}
    path = _cache_file(folder, dtype)
    found = _read_cache(path, expect)
    if found is not None:
        return found
    ident = compute()
    if ident.get("weights"):
        _write_cache(path, {**expect, "identity": ident})
    return ident


def recipe_identity(recipe, load: Callable[[], Any]) -> dict:
    """The identity of a recipe's model: from the per-folder cache for a local folder (no load needed while
    its files are unchanged), else from the loaded pipeline (`load()` -> Loaded), cached by the folder diffusers
    loaded it from (a hub snapshot)."""
    from .backbones.loader import model_path

    dtype = str(recipe.model.dtype)
    pretrained = recipe.model.source == "pretrained" and not getattr(recipe.model, "adapter", None)
    if pretrained and recipe.model.path and Path(model_path(recipe)).expanduser().is_dir():
        root = model_folder(Path(model_path(recipe)).expanduser().resolve())
        return folder_identity(root, dtype, lambda: identity_of(load().transformer, source=str(root)))
    transformer = load().transformer
    folder = weights_folder(transformer) if pretrained else None
    if folder is not None:
        return folder_identity(folder, dtype, lambda: identity_of(transformer, source=str(folder.resolve())))
    return identity_of(transformer)
