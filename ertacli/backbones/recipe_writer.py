"""`ertacache recipes new --from MODEL_DIR_OR_HUB_ID`: a recipe read from a pipeline folder's model_index.json.

The pipeline class comes from `model_index.json`, the call settings from that class's own defaults
(num_inference_steps, guidance_scale, height/width from the transformer's sample size and the VAE's scale,
num_frames), the dtype from the transformer's weights, the text encoder from whether the folder has one (none:
the offline hash encoder). `--model DIR` runs a pipeline folder directly through the same recipe.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from ertacli.errors import UserError

INDEX = "model_index.json"
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def is_pipeline_dir(path: str | Path) -> bool:
    """Whether `path` is a folder holding a diffusers model_index.json."""
    return Path(str(path)).expanduser().joinpath(INDEX).is_file()


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the {what} ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the {what} is not a JSON object")
    return data


def _hub_folder(hub_id: str) -> Path:
    """The model_index.json and component configs of a hub id (no weights), or one line saying why not."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, allow_patterns=[INDEX, "*/config.json", "scheduler/*.json"]))
    except Exception as exc:  # noqa: BLE001 - network, auth or a wrong id: all one user-facing line
        raise UserError(f"--from {hub_id}: not a local pipeline folder and the hub did not answer "
                        f"({type(exc).__name__}); download it (`huggingface-cli download {hub_id}`) and pass "
                        f"the folder") from None


def _weights_dtype(folder: Path) -> str:
    """The dtype of the transformer's first safetensors file (bfloat16 when there are no local weights)."""
    files = sorted((folder / "transformer").glob("*.safetensors")) if (folder / "transformer").is_dir() else []
    if not files:
        return "bfloat16"
    with open(files[0], "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(min(n, 100_000_000)))
    dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return next((SAFETENSORS_DTYPES[d] for d in sorted(dtypes) if d in SAFETENSORS_DTYPES), "bfloat16")


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__call__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _size(folder: Path, defaults: dict, video: bool) -> tuple[int, int]:
    tr = _read_json(folder / "transformer" / "config.json", "transformer config") \
        if (folder / "transformer" / "config.json").is_file() else {}
    vae = _read_json(folder / "vae" / "config.json", "VAE config") if (folder / "vae" / "config.json").is_file() else {}
    scale = 2 ** (len(vae["block_out_channels"]) - 1) if isinstance(vae.get("block_out_channels"), list) else 8
    h, w = defaults.get("height"), defaults.get("width")
    if isinstance(h, int) and isinstance(w, int):
        return h, w
    sample = tr.get("sample_size")
    if isinstance(sample, int) and not video:
        return sample * scale, sample * scale
    return (480, 832) if video else (1024, 1024)


def recipe_text(source: str) -> tuple[str, str]:
    """(recipe name, YAML text) of a pipeline folder or hub id."""
    import diffusers

    from ertacli.assets import find_named

    local = Path(source).expanduser()
    folder = local if local.is_dir() else _hub_folder(source)
    if not (folder / INDEX).is_file():
        raise UserError(f"--from {source}: no {INDEX} there; give a diffusers pipeline folder (save_pretrained) "
                        f"or a hub id")
    index = _read_json(folder / INDEX, INDEX)
    pipeline = str(index.get("_class_name", ""))
    cls = getattr(diffusers, pipeline, None)
    if not isinstance(cls, type):
        raise UserError(f"{folder / INDEX}: _class_name {pipeline!r} is not a diffusers pipeline class here "
                        f"(diffusers {diffusers.__version__})")
    d = _defaults(cls)
    video = "num_frames" in inspect.signature(cls.__call__).parameters
    h, w = _size(folder, d, video)
    has_text = any(isinstance(v, list) and v[0] is not None for k, v in index.items() if k.startswith("text_encoder"))
    name = re.sub(r"[^a-z0-9.-]+", "-", (local.resolve().name if local.is_dir() else source.split("/")[-1]).lower())
    steps = d.get("num_inference_steps") if isinstance(d.get("num_inference_steps"), int) else 50
    lines = [f"# Written by `ertacache recipes new --from {source}` from its {INDEX} ({pipeline}) and the pipeline",
             "# class's own call defaults; check size, steps and guidance against the model card.",
             f"name: {name}", f"include: {find_named('_video' if video else '_image')}",
             f"description: {pipeline} from {source}", "model:", f"  pipeline: {pipeline}",
             f"  path: {json.dumps(str(folder.resolve()) if local.is_dir() else source)}",
             f"  dtype: {_weights_dtype(folder) if local.is_dir() else 'bfloat16'}"]
    if not has_text:
        lines.append("  text_encoder: hash  # the folder has no text encoder: offline hash embeddings")
    lines += ["sampling:", f"  steps: {steps}", f"  height: {h}", f"  width: {w}"]
    if isinstance(d.get("guidance_scale"), (int, float)):
        lines.append(f"  guidance_scale: {float(d['guidance_scale'])}")
    if video and isinstance(d.get("num_frames"), int):
        lines.append(f"  frames: {d['num_frames']}")
    return name, "\n".join(lines) + "\n"


def write_recipe(source: str, out: str | None = None, force: bool = False) -> Path:
    """Write the recipe of `source` to `out` (default ./recipes/NAME.yaml); refuses to overwrite unless `force`."""
    name, text = recipe_text(source)
    path = Path(out) if out else Path("recipes") / f"{name}.yaml"
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it (or move it away first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def folder_recipe(folder: str | Path) -> Path:
    """The recipe `--model DIR` uses for a pipeline folder: written once beside the user's cache, not in DIR."""
    name, text = recipe_text(str(folder))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ertacache" / "recipes"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.yaml"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path
