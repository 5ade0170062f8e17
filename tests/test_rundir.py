"""Run folders: atomic completion, cleanup on failure, latest-run lookup."""

from __future__ import annotations

import json

import pytest
import typer

from ertacli.errors import UserError
from ertacli.runs.rundir import RunDir, env_info, latest_run


def entries(path):
    """Names in a folder, sorted."""
    return sorted(p.name for p in path.iterdir())


def test_success_renames_to_final(tmp_path):
    with RunDir("tiny-flux", "profile", ["ertacache", "profile", "tiny flux"], results_dir=tmp_path) as rd:
        assert rd.path.name.startswith(".tmp-profile-")
        assert rd.path.is_dir()
        rd.write_json("a.json", {"x": 1.5, "nan": float("nan")})
        rd.write_text("b.txt", "hi")
        (rd.subdir("tensors") / "t.bin").write_bytes(b"\0")
    final = rd.final_path
    assert final is not None and final.is_dir() and rd.path == final
    assert final.parent == tmp_path / "tiny-flux"
    assert final.name.startswith("profile-") and not final.name.startswith(".tmp")
    assert entries(tmp_path / "tiny-flux") == [final.name]
    assert entries(final) == [".ertacache-run", "a.json", "b.txt", "command.txt", "tensors"]  # the marker stays
    assert (final / "command.txt").read_text() == "ertacache profile 'tiny flux'\n"
    assert json.loads((final / "a.json").read_text()) == {"x": 1.5, "nan": None}
    assert latest_run("tiny-flux", "profile", results_dir=tmp_path) == final


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), UserError("bad"), typer.Exit(3)])
def test_failure_removes_temp_dir(tmp_path, exc):
    with pytest.raises(type(exc)):
        with RunDir("r", "fit", ["x"], results_dir=tmp_path) as rd:
            rd.write_text("partial.txt", "half")
            raise exc
    assert rd.final_path is None
    assert not rd.tmp_path.exists()
    assert entries(tmp_path / "r") == []
    assert latest_run("r", "fit", results_dir=tmp_path) is None


def test_exit_zero_counts_as_success(tmp_path):
    with pytest.raises(typer.Exit):
        with RunDir("r", "fit", ["x"], results_dir=tmp_path) as rd:
            raise typer.Exit(0)
    assert rd.final_path is not None and rd.final_path.is_dir()


def test_latest_run_ignores_tmp_and_other_commands(tmp_path):
    base = tmp_path / "r"
    for name in ["fit-20240101T000000Z-aaaaaa", "fit-20240102T000000Z-bbbbbb",
                 ".tmp-fit-20250101T000000Z-cccccc", "fitx-20260101T000000Z-dddddd",
                 "profile-20260101T000000Z-eeeeee"]:
        (base / name).mkdir(parents=True)
    assert latest_run("r", "fit", results_dir=tmp_path) == base / "fit-20240102T000000Z-bbbbbb"
    older = latest_run("r", "fit", predicate=lambda p: p.name.endswith("aaaaaa"), results_dir=tmp_path)
    assert older == base / "fit-20240101T000000Z-aaaaaa"
    assert latest_run("r", "fit", predicate=lambda p: False, results_dir=tmp_path) is None
    assert latest_run("nope", "fit", results_dir=tmp_path) is None


def test_results_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "res"))
    with RunDir("r", "eval", []) as rd:
        pass
    assert rd.final_path.parent == tmp_path / "res" / "r"
    assert latest_run("r", "eval") == rd.final_path


def test_bad_folder_names_refused(tmp_path):
    with pytest.raises(UserError, match="cannot be used as a folder name"):
        RunDir("a/b", "fit", [], results_dir=tmp_path)


def test_env_info_fields():
    info = env_info("cpu", "torch.float32", [0, 1])
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["seeds"] == [0, 1]
    assert set(info["packages"]) == {"torch", "diffusers", "transformers", "ertacache", "numpy"}
    assert info["packages"]["ertacache"] is not None
    assert info["git_commit"] is None or len(info["git_commit"]) == 40
    assert info["git_dirty"] in (None, True, False)
    assert info["utc_time"].endswith("+00:00")
    json.dumps(info)
