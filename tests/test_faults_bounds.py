"""Runs that cannot hurt you (issue 25): one test per class of defect.

1. writes and deletes stay inside the run (or results) folder, never through a link; records name only their own
   files; `runs --clean` removes only marked folders; `export` never writes into a finished run by default;
2. a run folder is data: reproduce and resume import no code and change no directory because it says so;
3. the lock cannot be taken twice; a record whose file does not load is redone (resume itself: test_resume.py);
4. every input the tool reads is bounded: one line, exit 2, nothing written; no Rich markup in user text; Markdown
   cells escaped; a plan's rectify.safetensors checked against its cached steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from test_faults import GEN, N, PROMPTS, FAST, calls, final_runs, interrupted, one_line, records, tmp_runs  # noqa: F401


def toy_plan(cached: dict[str, list[int]], T: int = 8, **kw):
    """A hand-built valid plan of the tiny FLUX backbone with these cached steps."""
    from ertacli.plan import Plan

    return Plan(recipe="toy", recipe_key="0123456789abcdef", model_id="FluxPipeline:tiny", steps=T,
                scheduler={"class": "FlowMatchEulerDiscreteScheduler", "config": {}}, residual="hidden",
                base_sigmas=[1.0 - i / T for i in range(T + 1)], branches=list(cached), cached_steps=cached,
                sample_shape={}, calibration={}, **kw)


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.png"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"precious")
    return victim


def test_writes_and_deletes_stay_inside_the_run(results, monkeypatch, capsys, calls, tmp_path):  # noqa: F811
    victim = _outside(tmp_path)
    tmp = interrupted(results, monkeypatch, capsys, calls, at=3)  # samples 000 and 001 finished
    (tmp / "grid.png").symlink_to(victim)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 2 and "symbolic link" in one_line(err) and "grid.png" in err
    assert victim.read_bytes() == b"precious" and not final_runs(results)
    (tmp / "grid.png").unlink()
    # a record naming a file outside the run is not a finished sample: it is redone, never shown
    rec = tmp / "records" / "000.json"
    rec.write_text(json.dumps({**json.loads(rec.read_text()), "file": "../../../outside/victim.png"}))
    before = len(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) - before == 1  # sample 000 redone (001 kept; 002 finished by the refused resume)
    (final,) = final_runs(results)
    assert "victim" not in (final / "samples.csv").read_text() and victim.read_bytes() == b"precious"

    # runs --clean: only marked folders inside the results folder go; links and foreign folders stay
    foreign = results / "tiny-flux-random" / ".tmp-mine-not-ertacache"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    elsewhere = tmp_path / "elsewhere" / "recipe"
    (elsewhere / ".tmp-profile-20250101T000000Z-cccccc").mkdir(parents=True)
    (elsewhere / ".tmp-profile-20250101T000000Z-cccccc" / ".ertacache-run").write_text('{"tool": "ertacache"}')
    (results / "linked-recipe").symlink_to(elsewhere, target_is_directory=True)
    ours = results / "tiny-flux-random" / ".tmp-profile-20250101T000000Z-aaaaaa"
    ours.mkdir()
    (ours / ".ertacache-run").write_text('{"tool": "ertacache"}')
    code, out, err = cli(monkeypatch, capsys, "runs", "--clean")
    assert code == 0, err
    assert not ours.exists() and (foreign / "keep.txt").is_file()
    assert (elsewhere / ".tmp-profile-20250101T000000Z-cccccc").is_dir()

    # export writes into the working folder by default, never into the (finished) run holding the plan
    plan_dir = toy_plan({"cond": [2, 3, 5]}).save(final / "plan")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = cli(monkeypatch, capsys, "export", str(plan_dir))
    assert code == 0, err
    assert (work / "cache-dit.json").is_file() and not (plan_dir / "cache-dit.json").exists()
    code, _, err = cli(monkeypatch, capsys, "export", str(plan_dir))
    assert code == 2 and "already exists" in one_line(err)


def test_guard_refuses_names_and_links_out_of_the_run(tmp_path):
    from ertacli.errors import UserError
    from ertacli.runs.rundir import RunDir

    outside = tmp_path / "outside"
    outside.mkdir()
    with RunDir("r", "fit", ["x"], results_dir=tmp_path / "results") as rd:
        for name in ("../../outside/x.json", "/etc/x.json", "a/../../x.json"):
            with pytest.raises(UserError, match="not a plain name|leaves the run"):
                rd.write_json(name, {})
        (rd.path / "sub").symlink_to(outside, target_is_directory=True)
        with pytest.raises(UserError, match="symbolic link"):
            rd.write_text("sub/x.txt", "no")
        from ertacli.runs.media import save_image
        import torch

        (rd.path / "img.png").symlink_to(outside / "img.png")
        with pytest.raises(UserError, match="symbolic link"):
            save_image(torch.zeros(3, 2, 2), rd.path / "img.png")
    assert list(outside.iterdir()) == []


ADAPTER = ("import pathlib\npathlib.Path({sentinel!r}).write_text('imported')\n"
           "def build(*a, **k):\n    raise SystemExit\n")


def test_run_folders_are_inert(results, monkeypatch, capsys, calls, tmp_path):  # noqa: F811
    sentinel = tmp_path / "ADAPTER-RAN"
    evil = tmp_path / "evil.py"
    evil.write_text(ADAPTER.format(sentinel=str(sentinel)))
    assert cli(monkeypatch, capsys, *GEN)[0] == 0
    (run,) = final_runs(results)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = json.loads((run / "argv.json").read_text())
    (run / "argv.json").write_text(json.dumps({**argv, "cwd": str(elsewhere)}))
    # a run folder recorded in another working folder: reproduced here, results beside the run, nothing there
    code, out, err = cli(monkeypatch, capsys, "reproduce", str(run))
    assert code == 0 and "exact match" in out, out + err
    assert list(elsewhere.iterdir()) == [] and len(final_runs(results)) == 2

    # a run whose recipe imports Python code: refused, naming the file, nothing imported
    import yaml

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"].update(pipeline="adapter", adapter=f"{evil}:build")
    recipe["cache"]["residual"] = "latent"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(monkeypatch, capsys, "reproduce", str(run))
    assert code == 2 and "--trust-adapter" in one_line(err) and str(evil) in err
    calls.clear()
    tmp = interrupted(results, monkeypatch, capsys, calls)
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 2 and "--trust-adapter" in one_line(err) and str(evil) in err
    assert not sentinel.exists()


LOCKER = """
import sys, time
from ertacli.runs.guard import take_lock
from ertacli.errors import UserError
try:
    take_lock(__import__("pathlib").Path(sys.argv[1]))
except UserError:
    print("busy", flush=True)
    sys.exit(3)
print("took", flush=True)
time.sleep(3)
"""


def test_a_stale_lock_is_taken_by_exactly_one_process(tmp_path):
    import platform

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "LOCK").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": platform.node()}))  # a dead owner
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["busy", "busy", "busy", "took"], outs


def test_a_record_whose_file_does_not_load_is_redone(results, monkeypatch, capsys, calls):  # noqa: F811
    tmp = interrupted(results, monkeypatch, capsys, calls, at=3)
    (tmp / "latents" / "000.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (tmp / "samples" / "001.png").write_bytes(b"\x89PNG truncated")
    before = len(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) - before == N  # both broken samples redone, and the one never made
    (final,) = final_runs(results)
    assert len(records(final)) == N


def _deep_yaml(path: Path, depth: int = 10_000) -> Path:
    path.write_text("name: deep\nmodel:\n  pipeline: FluxPipeline\nx: " + "[" * depth + "]" * depth + "\n")
    return path


BIG_PROMPT = "a " * 100_000  # 200k characters


def bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    big = tmp_path / "big-prompt.txt"
    big.write_text("x" * (10 * 1024 * 1024) + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 * 1024 * 1024) + "\nname: huge\n")
    inc_huge = tmp_path / "inc-huge.yaml"
    inc_huge.write_text(f"name: inc-huge\ninclude: {huge}\nmodel:\n  pipeline: FluxPipeline\n")
    inc_stdin = tmp_path / "inc-stdin.yaml"
    inc_stdin.write_text("name: inc-stdin\ninclude: /dev/stdin\nmodel:\n  pipeline: FluxPipeline\n")
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 10_000 + "]" * 10_000)
    nul = tmp_path / "nul.yaml"
    nul.write_text('name: "tiny\\0flux"\ninclude: ' + str(Path(__file__).resolve().parents[1] / "recipes" /
                                                       "tiny-flux-random.yaml") + "\n")
    gen = ["generate", "-m", "tiny-flux-random", "-q"]
    return {
        "prompt-file-10MB": [*gen, "--prompts", str(big)],
        "prompt-200k-chars": [*gen, "--prompt", BIG_PROMPT],
        "recipe-yaml-10k-deep": ["validate", str(_deep_yaml(tmp_path / "deep.yaml"))],
        "prompts-json-10k-deep": [*gen, "--prompts", str(deep_json)],
        "set-value-10k-deep": [*gen, "--set", "sampling.pipeline_kwargs=" + "[" * 10_000 + "]" * 10_000],
        "include-dev-stdin": ["validate", str(inc_stdin)],
        "include-huge-file": ["validate", str(inc_huge)],
        "recipe-name-nul": ["validate", "tiny-flux\x00-random"],
        "recipe-name-field-nul": ["generate", "-m", str(nul), "-q"],
        "size-at-maximum": [*gen, "--set", "sampling.height=16384", "--set", "sampling.width=16384"],
        "bench-samples-100000": ["bench", "-m", "tiny-flux-random", "--samples", "100000", "-q"],
    }


def test_big_deep_or_odd_input_is_one_line_exit_2(results, monkeypatch, capsys, tmp_path):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for name, args in bad_inputs(tmp_path).items():
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, (name, err[-500:])
        one_line(err)
        assert not any(results.glob("*/.tmp-*")) and not any(results.glob("*/generate-*")), name


def test_user_text_is_never_markup_and_markdown_cells_are_escaped(monkeypatch, capsys):
    import pandas as pd

    from ertacli.runs import console
    from ertacli.runs.tables import markdown

    monkeypatch.setattr(console, "interactive", lambda stream=None: True)
    console.say("prompt [/bold] and [red]path[/x]", "bold")
    console.show(pd.DataFrame({"prompt": ["[/x] a [b]"], "n": [1]}), "title [/oops]")
    out = capsys.readouterr().out
    assert "[/bold]" in out and "[/x] a [b]" in out
    table = markdown(pd.DataFrame({"prompt": ["a | b", "two\nlines"], "n": [1, 2]}))
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count(" | ") == 1 for line in lines[2:]), table
    assert r"a \| b" in table and "two lines" in table


def test_rectify_tensors_from_another_plan_are_refused(tmp_path):
    import torch

    from ertacli.errors import UserError
    from ertacli.plan import load_plan

    cached = {"cond": [1, 2, 3, 4, 5, 6]}
    rect = {"enabled": True, "form": "linear", "granularity": "channel", "scalar": {}}
    full = {f"cond.{k}.{ab}": torch.ones(4) for k in cached["cond"] for ab in "ab"}
    good = toy_plan(cached, rectify=rect).save(tmp_path / "good", tensors=full)
    assert load_plan(good).tensors.keys() == full.keys()
    partial = {k: v for k, v in full.items() if k.split(".")[1] in ("1", "2")}  # 2 of 6 cached steps
    bad = toy_plan(cached, rectify=rect).save(tmp_path / "bad", tensors=partial)
    with pytest.raises(UserError, match="does not match the plan's 6 cached steps"):
        load_plan(bad)
    mixed = {**full, "cond.3.a": torch.ones(5), "cond.3.b": torch.ones(5)}
    odd = toy_plan(cached, rectify=rect).save(tmp_path / "odd", tensors=mixed)
    with pytest.raises(UserError, match="shapes"):
        load_plan(odd)
