"""Prompt files: one prompt per line ('#' comments) or a JSON list (VBench style), read within the limits."""

from __future__ import annotations

import json
from pathlib import Path

from ertacli.errors import UserError
from ertacli.limits import MAX_DEPTH, MAX_PROMPT_FILE_BYTES, check_prompts, depth, read_text_bounded

PROMPT_HINT = "set calibration.prompts / eval.prompts or pass --prompts FILE"


def _json_prompts(path: Path, text: str) -> list[str]:
    """Prompts of a JSON list of strings or of objects with a "prompt_en" or "prompt" field (VBench style)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"prompt file {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        data = None
    if data is None or depth(data) > MAX_DEPTH:
        raise UserError(f"prompt file {path}: JSON nested deeper than {MAX_DEPTH} levels; give a list of prompts")
    if not isinstance(data, list):
        raise UserError(f"prompt file {path}: expected a JSON list of prompts, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = item.get("prompt_en", item.get("prompt"))
        if not isinstance(item, str):
            raise UserError(f"prompt file {path}: entry {i} is not a string or an object with 'prompt_en'/'prompt'")
        out.append(item.strip())
    return [p for p in out if p]


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of a file: a .json list (strings or {"prompt_en"|"prompt": ...}), else one per line, '#' comments."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file not found: {path} ({PROMPT_HINT})")
    text = read_text_bounded(path, MAX_PROMPT_FILE_BYTES, "prompt file")
    if path.suffix.lower() == ".json":
        prompts = _json_prompts(path, text)
    else:
        prompts = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} has no prompts (one prompt per line, '#' starts a comment)")
    return check_prompts(prompts, f"prompt file {path}")
