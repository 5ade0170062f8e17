"""Size and depth limits on everything the tool reads: files (recipes, includes, prompt files), prompts, options.

Each limit is far above any real input and refuses, in one line naming the file or option, what would otherwise
hang, exhaust memory or end in a traceback: devices and pipes (/dev/stdin), huge files, YAML/JSON nested
thousands deep, megabyte prompts, NUL bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_RECIPE_BYTES = 1 << 20  # a recipe or included file (a real one is a few KB)
MAX_PROMPT_FILE_BYTES = 64 << 20
MAX_PROMPT_CHARS = 10_000  # one prompt (text encoders read a few hundred tokens)
MAX_PROMPTS = 100_000
MAX_DEPTH = 32  # nesting of a recipe's or a JSON prompt file's mappings and lists
MAX_OVERRIDE_CHARS = 10_000
MAX_JSON_BYTES = 64 << 20  # a run folder's JSON files (records, inputs, argv)


def check_prompts(prompts: list[str], where: str = "--prompt") -> list[str]:
    """Prompts within the limits (count, length, no NUL byte), else one line naming where they came from."""
    if len(prompts) > MAX_PROMPTS:
        raise UserError(f"{where}: {len(prompts)} prompts, more than {MAX_PROMPTS}; split the prompt set")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or "\x00" in p:
            raise UserError(f"{where}: prompt {i + 1} holds a NUL byte or is not text; fix the prompt")
        if len(p) > MAX_PROMPT_CHARS:
            raise UserError(f"{where}: prompt {i + 1} has {len(p)} characters, more than {MAX_PROMPT_CHARS}; "
                            f"shorten it")
    return prompts


def read_text_bounded(path: Path, limit: int, what: str) -> str:
    """A regular file's text, refusing devices, FIFOs (/dev/stdin), files above `limit` bytes and non-UTF-8."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {path}: not a regular file (a device, pipe or folder); give a file")
        if st.st_size > limit:
            raise UserError(f"{what} {path}: {st.st_size} bytes, above the {limit}-byte limit; give a smaller file")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise UserError(f"{what} {path}: above the {limit}-byte limit; give a smaller file")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path}: cannot read it ({type(exc).__name__}: {exc}); give a UTF-8 text "
                        f"file") from None


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of mappings and lists (iterative; stops counting past `limit`)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def available_bytes(device: str) -> int | None:
    """Memory this process can still allocate on `device` (free GPU memory, or the host's MemAvailable)."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(sampler, device: str) -> None:
    """Refuse, before anything is allocated, a size whose one-sample activations exceed the device's free memory
    (height and width at the schema's maximum would end in an allocator traceback or the OOM killer)."""
    import torch

    from .backbones.memory import estimate_peak

    kwargs = getattr(sampler, "call_kwargs", {})
    if not hasattr(getattr(sampler.pipe, "transformer", None), "config") or "height" not in kwargs:
        return
    free = available_bytes(device)
    per = torch.empty((), dtype=sampler.dtype or torch.float32).element_size()
    est = estimate_peak(sampler.pipe, sampler.backbone, kwargs, 1, 1, per)
    need = est["activations"] + est["state"]
    if free is not None and need > free:
        frames = f"x{kwargs['num_frames']}" if kwargs.get("num_frames") else ""
        size = f"{kwargs['height']}x{kwargs['width']}{frames}"
        raise UserError(f"sampling size {size}: one sample needs about {need / 2**30:.1f} GiB of activations "
                        f"({est['tokens']} tokens), more than the {free / 2**30:.1f} GiB free on {device}; lower "
                        f"sampling.height/width/frames")
