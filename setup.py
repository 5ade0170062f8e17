"""Build step for the wheel: ship the repository's recipes/, prompts/, models/ and examples/ inside the package.

The top-level folders stay the source of truth (nothing is committed twice). A regular build (`pip install .`,
`pip wheel .`, an sdist's wheel) copies them into ertacli/bundled/ in the build tree, keeping their relative
layout so a recipe's `../prompts/...` and `../models/...` paths still hold. An editable install copies nothing:
it runs from the checkout, whose top-level folders ertacli.assets finds directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED_FOLDERS = ("recipes", "prompts", "models", "examples")  # keep in step with ertacli/assets.py
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def copy_bundled(src_root: Path, dst: Path) -> list[str]:
    """Copy BUNDLED_FOLDERS from src_root into dst (replacing what was there); the copied file paths."""
    missing = [name for name in BUNDLED_FOLDERS if not (src_root / name).is_dir()]
    if missing:
        raise SystemExit(f"setup.py: cannot bundle {', '.join(missing)}: not a folder in {src_root}")
    if dst.exists():
        shutil.rmtree(dst)
    for name in BUNDLED_FOLDERS:
        shutil.copytree(src_root / name, dst / name, ignore=SKIP)
    return sorted(str(p) for p in dst.rglob("*") if p.is_file())


class BuildPyWithBundled(build_py):
    """build_py that also copies the bundled folders into <build_lib>/ertacli/bundled/ (not when editable)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self._bundled = copy_bundled(HERE, Path(self.build_lib) / "ertacli" / "bundled")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *getattr(self, "_bundled", [])]


setup(cmdclass={"build_py": BuildPyWithBundled})
