"""Where the bundled recipes, prompts and tiny models live, and the order recipe names are looked up in.

A checkout (editable install, or the source tree on PYTHONPATH) uses its own top-level recipes/ prompts/
models/ examples/. A regular install uses the copies the build put into the wheel under ertacli/bundled/, in
the same relative layout, so a recipe's `../prompts/...` and `../models/...` paths hold in both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import ertacli
from ertacli.errors import UserError

BUNDLED_FOLDERS = ("recipes", "prompts", "models", "examples")
"""Top-level folders of the repository that the wheel carries (setup.py copies them into ertacli/bundled/)."""
PACKAGE_DIR = Path(ertacli.__file__).resolve().parent
RECIPES_ENV = "ERTACACHE_RECIPES"


class RecipeFile(NamedTuple):
    """A named recipe found on the search path: its name, file and where it came from."""

    name: str
    path: Path
    origin: str


def checkout_root() -> Optional[Path]:
    """The source checkout this package runs from (pyproject.toml and recipes/ beside ertacli/), else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "recipes").is_dir() else None


def bundled_root() -> Path:
    """Folder holding recipes/ prompts/ models/ examples/: the checkout's top level, else ertacli/bundled/."""
    return checkout_root() or PACKAGE_DIR / "bundled"


def _env_folders() -> list[Path]:
    """The folders of $ERTACACHE_RECIPES (os.pathsep-separated); a missing one is a one-line error."""
    out = []
    for entry in os.environ.get(RECIPES_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise UserError(f"{RECIPES_ENV} entry {entry!r} is not a folder; set it to folders of recipe .yaml "
                            f"files separated by '{os.pathsep}', or unset it")
        out.append(folder)
    return out


def search_path() -> list[tuple[str, Path]]:
    """(origin, folder) in lookup order: ./recipes, each $ERTACACHE_RECIPES folder, the bundled recipes.

    ./recipes counts only when it is a folder; a folder reached twice (e.g. ./recipes in the checkout root) is
    kept at its first place.
    """
    candidates = [("./recipes", Path.cwd() / "recipes")]
    candidates += [(f"${RECIPES_ENV}", folder) for folder in _env_folders()]
    candidates.append(("bundled", bundled_root() / "recipes"))
    out, seen = [], set()
    for origin, folder in candidates:
        if not folder.is_dir():
            continue
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            out.append((origin, folder))
    return out


def available_recipes() -> list[RecipeFile]:
    """Every named recipe on the search path, sorted by name; a name found twice is the first folder's."""
    found: dict[str, RecipeFile] = {}
    for origin, folder in search_path():
        for path in sorted(folder.glob("*.yaml")):
            if not path.name.startswith(("_", ".")) and path.is_file():
                found.setdefault(path.stem, RecipeFile(path.stem, path, origin))
    return sorted(found.values())


def find_named(name: str) -> Optional[Path]:
    """The recipe file NAME.yaml in the first search-path folder that has it, else None."""
    for _, folder in search_path():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def describe_search_path() -> str:
    """The searched folders as one short phrase, for error messages."""
    folders = [f"{origin} ({folder})" if origin.startswith("$") or origin == "bundled" else origin
               for origin, folder in search_path()]
    return ", ".join(folders) or f"no recipe folder (the bundled one is missing: {bundled_root() / 'recipes'})"
