"""Interrupted runs: a signal midway leaves a resumable directory; --resume finishes it, no sample run twice."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

from ertacli.backbones.sampler import Sampler
from conftest import cli
from test_cli import FAST, runs

ARGS = ["generate", "-m", "tiny-flux-random", "--prompt", "a seven", "--prompt", "a two", "--seed", "0",
        "--seed", "1", *FAST]


def test_interrupt_then_resume_equals_uninterrupted(results, monkeypatch, capsys):
    assert cli(monkeypatch, capsys, *ARGS)[0] == 0
    (reference,) = runs(results, "tiny-flux-random", "generate")

    calls: list[tuple] = []
    real = Sampler.run

    def counting(self, prompts, seeds, on_step=None):
        calls.append((tuple(prompts), tuple(seeds)))
        if len(calls) == 3 and os.environ.get("ERTA_TEST_KILL") == "1":
            os.kill(os.getpid(), signal.SIGINT)  # a real signal after 2 finished samples
        return real(self, prompts, seeds, on_step=on_step)

    monkeypatch.setattr(Sampler, "run", counting)
    monkeypatch.setenv("ERTA_TEST_KILL", "1")
    code, _, err = cli(monkeypatch, capsys, *ARGS)
    assert code == 130
    (partial,) = [p for p in (results / "tiny-flux-random").iterdir() if p.name.startswith(".tmp-generate-")]
    assert (partial / "INCOMPLETE").is_file()
    done = sorted(p.name for p in (partial / "records").glob("*.json"))
    assert done == ["000.json", "001.json"]
    assert not any(p.name.startswith("generate-") and p != reference for p in (results / "tiny-flux-random").iterdir())

    monkeypatch.setenv("ERTA_TEST_KILL", "0")
    first = list(calls)
    code, _, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--resume", str(partial), *FAST)
    assert code == 0, err
    resumed = calls[len(first):]
    assert len(resumed) == 2 and set(resumed).isdisjoint(first[:2])
    assert sorted(first[:2] + resumed) == sorted(set(first[:2] + resumed))  # every sample computed once
    final = [p for p in runs(results, "tiny-flux-random", "generate") if p != reference]
    assert len(final) == 1 and not partial.exists()
    a, b = load_file(str(reference / "latents.safetensors")), load_file(str(final[0] / "latents.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (final[0] / "samples.csv").read_text().splitlines()
    assert len(rows) == 5 and json.loads((final[0] / "generate.json").read_text())["resumed"] is True


def test_estimate_arithmetic():
    from ertacli.commands.estimate import estimate_rows

    rows = estimate_rows(prompts=10, seeds=3, baseline_s=36.0, cached_s=18.0, gpus=[1, 4],
                         calibration_passes=2, calibration_prompts=5)
    assert rows[0]["videos_per_gpu"] == 30 and rows[1]["videos_per_gpu"] == 8
    assert rows[0]["total_hours"] == (30 * 54 + 2 * 5 * 36) / 3600
    assert rows[1]["total_hours"] == (8 * 54 + 2 * 2 * 36) / 3600


CHECKOUT = Path(__file__).resolve().parents[1]
# the command on the trained recipe, as small as it stays meaningful: every digit prompt, 2 steps
TINY = ["generate", "--model", "tiny-flux", "--prompts", "prompts/tiny-digits.txt", "--set", "sampling.steps=2",
        "--set", "eval.warmup=0", "-q"]


def _printed_resume(err: str) -> list[str]:
    """The resume command the interrupted run printed, as arguments of `ertacache`."""
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    command = line.split("resume with: ", 1)[1]
    args = shlex.split(command)
    assert args[:3] == ["ertacache", "generate", "--resume"]
    return args[1:]


def test_trained_recipe_resumes_after_sigint_and_sigterm_and_reproduces_anywhere(results, monkeypatch, capsys,
                                                                                 tmp_path):
    from ertacli.commands.reproduce import compare_runs

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(CHECKOUT)
    code, _, err = cli(monkeypatch, capsys, *TINY)
    assert code == 0, err
    (reference,) = runs(results, "tiny-flux", "generate")
    assert "/" in json.loads((reference / "argv.json").read_text())["cwd"]

    real = Sampler.run
    for sig, at, code_expected in ((signal.SIGINT, 4, 130), (signal.SIGTERM, 8, 143)):
        calls: list = []

        def stopping(self, prompts, seeds, on_step=None, _sig=sig, _at=at, _calls=calls):
            _calls.append(1)
            if len(_calls) == _at:
                os.kill(os.getpid(), _sig)  # a real signal while computing sample `at`
            return real(self, prompts, seeds, on_step=on_step)

        monkeypatch.setattr(Sampler, "run", stopping)
        monkeypatch.chdir(CHECKOUT)
        code, _, err = cli(monkeypatch, capsys, *TINY)
        assert code == code_expected, err
        args = _printed_resume(err)
        partial = Path(args[-1])
        assert not (partial / "LOCK").exists() and (partial / "INCOMPLETE").is_file()
        assert len(list((partial / "records").glob("*.json"))) == at - 1
        monkeypatch.setattr(Sampler, "run", real)
        monkeypatch.chdir(elsewhere)  # the printed command works from any working folder
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 0, err
        (final,) = [p for p in runs(results, "tiny-flux", "generate") if p.name == partial.name[len(".tmp-"):]]
        diff = [r for r in compare_runs(reference, final) if r["status"] != "match"]
        assert not diff, diff

    for where in (CHECKOUT, elsewhere):
        monkeypatch.chdir(where)
        code, out, err = cli(monkeypatch, capsys, "reproduce", str(final))
        assert code == 0 and "exact match" in out, out + err
    assert list(elsewhere.iterdir()) == []
