"""Fault injection: a failed write at each write of a run, SIGINT / SIGKILL at a random sample, resumes with
contradicting options, a concurrent resume, corrupt runs under `reproduce`, bad input that must be one line.

Every case asserts the exit code, a one-line message without a traceback, that no finished sample is lost, that a
resume recomputes nothing already finished, and that the final directory's every record agrees with its inputs.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli

STEPS = "6"
PROMPTS = ["--prompt", "a seven", "--prompt", "a two", "--prompt", "a nine", "--seed", "0"]
FAST = ["--set", f"sampling.steps={STEPS}", "--set", "eval.warmup=0", "-q"]
GEN = ["generate", "-m", "tiny-flux-random", *PROMPTS, *FAST]
N = 3


def one_line(err: str) -> str:
    """The message, checked to be one line with no traceback."""
    text = err.strip()
    assert text and "\n" not in text and "Traceback" not in text, err
    return text


def tmp_runs(results: Path) -> list[Path]:
    return sorted((results / "tiny-flux-random").glob(".tmp-generate-*")) if results.exists() else []


def final_runs(results: Path) -> list[Path]:
    return sorted((results / "tiny-flux-random").glob("generate-*")) if results.exists() else []


def records(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "records").glob("*.json"))


def assert_consistent(run: Path) -> None:
    """Every record of a final run was made with the settings its inputs.json and recipe.yaml record."""
    import pandas as pd
    import yaml

    inputs = json.loads((run / "inputs.json").read_text())
    steps = yaml.safe_load((run / "recipe.yaml").read_text())["sampling"]["steps"]
    df = pd.read_csv(run / "samples.csv")
    assert len(df) == N and set(df["settings"]) == {inputs["settings_digest"]}
    assert set(df["nfe"]) == {steps}
    assert json.loads((run / "generate.json").read_text())["settings_digest"] == inputs["settings_digest"]
    assert not (run / "LOCK").exists() and not (run / "INCOMPLETE").exists()


class Calls(list):
    """The sampler calls made, with `state` (hook, at)."""

    state: dict


@pytest.fixture()
def calls(monkeypatch):
    """Every sampler call as (prompt, seed); an optional hook runs before call number `hook_at` (1-based)."""
    from ertacli.backbones.sampler import Sampler

    made = Calls()
    state = {"hook": None, "at": 0}
    real = Sampler.run

    def counting(self, prompts, seeds, on_step=None):
        made.append((tuple(prompts), tuple(seeds)))
        if state["hook"] is not None and len(made) == state["at"]:
            state["hook"]()
        return real(self, prompts, seeds, on_step=on_step)

    monkeypatch.setattr(Sampler, "run", counting)
    made.state = state  # type: ignore[attr-defined]
    return made


def disk_full_at(monkeypatch, target: str) -> None:
    """Every write whose path contains `target` fails with ENOSPC (open for writing, safetensors, rename)."""
    import safetensors.torch

    def hit(path) -> None:
        if target in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real_open, real_save, real_replace, real_rename = builtins.open, safetensors.torch.save_file, os.replace, os.rename

    def fake_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            hit(file)
        return real_open(file, mode, *a, **k)

    def fake_save(tensors, filename, *a, **k):
        hit(filename)
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(safetensors.torch, "save_file", fake_save)
    monkeypatch.setattr(os, "replace", lambda a, b, **k: (hit(b), real_replace(a, b, **k))[1])
    monkeypatch.setattr(os, "rename", lambda a, b, **k: (hit(b), real_rename(a, b, **k))[1])


# (the write that fails, finished samples it leaves): before the first sample, at the second, and every write after
WRITES = [("inputs.json", 0), ("samples/001.png", 1), ("latents/001.safetensors", 1), ("records/001", 1),
          ("latents.safetensors", N), ("grid.png", N), ("samples.csv", N), ("generate.json", N),
          ("resources.json", N), ("command.txt", N), ("/generate-", N)]


@pytest.mark.parametrize("target,kept", WRITES, ids=[w for w, _ in WRITES])
def test_disk_full_at_each_write_keeps_finished_samples(results, monkeypatch, capsys, calls, target, kept):
    with monkeypatch.context() as m:
        disk_full_at(m, target)
        code, _, err = cli(monkeypatch, capsys, *GEN)
    assert code == 2
    msg = one_line(err)
    assert "No space left on device" in msg and "free disk space" in msg
    assert not final_runs(results)
    if kept == 0:
        assert not tmp_runs(results) and "removed" in msg  # nothing finished: nothing left behind
        return
    (tmp,) = tmp_runs(results)
    assert len(records(tmp)) == kept and "--resume" in msg and str(tmp) in msg
    assert "resume: ertacache generate --resume" in (tmp / "INCOMPLETE").read_text()
    before = len(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) - before == N - kept  # nothing recomputed
    (final,) = final_runs(results)
    assert_consistent(final)


def test_sigint_at_a_random_sample_then_resume(results, monkeypatch, capsys, calls):
    k = random.Random(16).randint(2, N)  # interrupted while computing sample k (1-based): k - 1 are kept
    calls.state.update(hook=lambda: os.kill(os.getpid(), signal.SIGINT), at=k)
    code, _, err = cli(monkeypatch, capsys, *GEN)
    assert code == 130
    msg = one_line(err)
    (tmp,) = tmp_runs(results)
    assert msg.startswith("interrupted:") and f"kept {k - 1} finished sample(s)" in msg
    assert f"ertacache generate --resume {tmp}" in msg and len(records(tmp)) == k - 1
    calls.state.update(hook=None)
    done = list(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) - len(done) == N - (k - 1) and set(calls[len(done):]).isdisjoint(done[:k - 1])
    (final,) = final_runs(results)
    assert_consistent(final)


KILLER = """
import os, signal, sys
from ertacli.backbones.sampler import Sampler
real, n = Sampler.run, [0]
def run(self, *a, **k):
    n[0] += 1
    if n[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
Sampler.run = run
sys.argv = ["ertacache", *sys.argv[1:]]
from ertacli.cli import main
main()
"""


def test_sigkill_leaves_a_listed_resumable_run(results, monkeypatch, capsys, calls, tmp_path):
    k = random.Random(7).randint(2, N)
    env = {**os.environ, "KILL_AT": str(k), "PYTHONPATH": os.pathsep.join(sys.path), "ERTACACHE_TEST_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, *GEN], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (tmp,) = tmp_runs(results)
    assert len(records(tmp)) == k - 1 and (tmp / "LOCK").is_file()  # a dead owner's lock
    killed = results / "tiny-flux-random" / ".tmp-profile-20250101T000000Z-aaaaaa"  # a killed profile: nothing kept
    killed.mkdir()
    (killed / ".ertacache-run").write_text('{"tool": "ertacache"}')
    code, out, _ = cli(monkeypatch, capsys, "runs", "--clean")
    assert code == 0 and "interrupted" in out and "1 empty ones removed" in out
    from ertacli.commands.runs import incomplete_runs

    (row,) = incomplete_runs(results)
    assert row["resume"] == f"ertacache generate --resume {tmp}" and row["finished_samples"] == k - 1
    assert not (results / "tiny-flux-random" / ".tmp-profile-20250101T000000Z-aaaaaa").exists() and tmp.is_dir()
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) == N - (k - 1)  # the stale lock is taken over; only the missing samples run
    (final,) = final_runs(results)
    assert_consistent(final)


def interrupted(results, monkeypatch, capsys, calls, at: int = 2) -> Path:
    """A generate run stopped by Ctrl-C while computing sample `at`."""
    calls.state.update(hook=lambda: os.kill(os.getpid(), signal.SIGINT), at=at)
    assert cli(monkeypatch, capsys, *GEN)[0] == 130
    calls.state.update(hook=None)
    (tmp,) = tmp_runs(results)
    return tmp


def test_resume_refuses_every_contradicting_option(results, monkeypatch, capsys, calls, tmp_path):
    tmp = interrupted(results, monkeypatch, capsys, calls)
    fake_plan = tmp_path / "other-plan"
    fake_plan.mkdir()
    (fake_plan / "plan.json").write_text("{}")
    contradictions = {"--set sampling.steps": ["--set", "sampling.steps=8"], "--model": ["-m", "tiny-wan-random"],
                      "--plan": ["--plan", str(fake_plan)], "--prompt": ["--prompt", "a one"],
                      "--seed": ["--seed", "5"], "--set sampling.height": ["--set", "sampling.height=16"]}
    for option, extra in contradictions.items():
        code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), *extra, "-q")
        assert code == 2, option
        assert one_line(err).startswith("error: --resume") and option.split()[0] in err, err
        assert records(tmp) == ["000.json"] and not final_runs(results)
    before = len(calls)  # the same options again are no contradiction
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-m", "tiny-flux-random", *PROMPTS, *FAST)
    assert code == 0, err
    assert len(calls) - before == N - 1
    (final,) = final_runs(results)
    assert_consistent(final)


def test_a_second_concurrent_resume_fails_at_once_with_the_owners_pid(results, monkeypatch, capsys, calls):

    tmp = interrupted(results, monkeypatch, capsys, calls)
    holder = ("import fcntl, json, os, platform, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': platform.node()})"
              ".encode()); print('held', flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", holder, str(tmp / "LOCK")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
        assert code == 2 and f"in use by process {owner.pid}" in one_line(err)
        assert tmp.is_dir() and records(tmp) == ["000.json"] and not final_runs(results)
    finally:
        owner.kill()
        owner.wait()
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(final_runs(results)) == 1 and not tmp_runs(results)


def test_a_resumed_record_with_other_settings_is_redone(results, monkeypatch, capsys, calls):
    tmp = interrupted(results, monkeypatch, capsys, calls, at=3)
    rec = tmp / "records" / "000.json"
    rec.write_text(json.dumps({**json.loads(rec.read_text()), "settings": "0000000000000000"}))
    (tmp / "samples" / "001.png").unlink()  # a finished sample whose file went missing is redone too
    before = len(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")
    assert code == 0, err
    assert len(calls) - before == N
    (final,) = final_runs(results)
    assert_consistent(final)


def test_reproduce_finds_every_difference(results, monkeypatch, capsys):
    from ertacli.commands.reproduce import compare_runs

    assert cli(monkeypatch, capsys, *GEN)[0] == 0
    (run,) = final_runs(results)
    copy = run.parent / "copy"
    shutil.copytree(run, copy)
    assert {r["status"] for r in compare_runs(copy, run)} == {"match"}
    rows = json.loads((copy / "records/000.json").read_text())
    (copy / "records/000.json").write_text(json.dumps({**rows, "seconds": 99.0}))  # a measurement: not compared
    assert {r["status"] for r in compare_runs(copy, run)} == {"match"}
    (copy / "samples/001.png").unlink()
    (copy / "samples.csv").write_text((copy / "samples.csv").read_text().replace("a nine", "a six"))
    (copy / "latents/002.safetensors").write_bytes(b"not a tensor file")
    (copy / "extra.json").write_text("{}")
    status = {r["file"]: r["status"] for r in compare_runs(copy, run)}
    assert status["samples/001.png"].startswith("only in the re-run")
    assert status["samples.csv"] == "differs" and status["extra.json"].startswith("only in the original")
    assert status["latents/002.safetensors"].startswith("differs: latents/002.safetensors (")
    tmp = run.parent / ".tmp-generate-20250101T000000Z-bbbbbb"
    shutil.copytree(run, tmp)
    code, _, err = cli(monkeypatch, capsys, "reproduce", str(tmp))
    assert code == 2 and "incomplete temporary run" in one_line(err)


def test_a_resumed_run_reproduces_exactly(results, monkeypatch, capsys, calls):
    tmp = interrupted(results, monkeypatch, capsys, calls)
    assert cli(monkeypatch, capsys, "generate", "--resume", str(tmp), "-q")[0] == 0
    (final,) = final_runs(results)
    code, out, err = cli(monkeypatch, capsys, "reproduce", str(final))
    assert code == 0, out + err
    assert "exact match" in out and "not compared (measurements)" in out


BAD_INPUT = {
    "steps": ["generate", "-m", "tiny-flux-random", "--set", "sampling.steps=1000000000"],
    "size": ["generate", "-m", "tiny-flux-random", "--set", "sampling.width=1000000"],
    "seed-negative": ["generate", "-m", "tiny-flux-random", "--seed", "-1"],
    "seed-huge": ["generate", "-m", "tiny-flux-random", "--seed", str(2 ** 64)],
    "estimate-gpus-0": ["estimate", "--n-prompts", "3", "--baseline-seconds", "1", "--cached-seconds", "1", "--gpus", "0"],
    "demo-samples-0": ["demo", "-m", "tiny-flux-random", "--samples", "0"],
    "resume-not-a-run": ["generate", "--resume", "results"],
    "unknown-command": ["nosuchcmd"],  # usage errors: one line too, never a traceback
    "unknown-option": ["search", "-m", "tiny-flux-random", "--bogus"],
    "option-without-value": ["search", "--lambda"],
    "option-not-a-number": ["eval", "-m", "tiny-flux-random", "--min-psnr", "abc"],
}


@pytest.mark.parametrize("args", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_exit_2_nothing_left(results, monkeypatch, capsys, args):
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2
    one_line(err)
    assert not any(results.glob("*/.tmp-*")) and not any(results.glob("*/generate-*"))


def test_world_size_without_launcher_and_unwritable_results(results, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli(monkeypatch, capsys, *GEN)
    assert code == 2 and "torchrun" in one_line(err)
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ERTACACHE_RESULTS", str(tmp_path / "a-file" / "results"))  # cannot be a folder
    code, _, err = cli(monkeypatch, capsys, *GEN)
    assert code == 2 and "a-file" in one_line(err)


def test_messages_are_capped():
    from ertacli.errors import UserError

    assert len(UserError("x" * 5_000_000).message) <= UserError.MAX_CHARS
