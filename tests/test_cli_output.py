"""What people read: help on every option, piped tables, progress lines, last lines (option names: test_cli_options)."""

from __future__ import annotations

import io

import click
import pytest
import typer

from conftest import cli
from ertacli.cli import app


def commands() -> dict[str, click.Command]:
    return dict(typer.main.get_command(app).commands)


def visible_options(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if not getattr(p, "hidden", False)]


def test_every_option_and_argument_has_help():
    empty = [f"{name} {p.opts[0] if p.opts else p.name}" for name, cmd in commands().items()
             for p in visible_options(cmd) if not (getattr(p, "help", None) or "").strip()]
    assert not empty, f"options without help: {empty}"


def test_help_keeps_bracketed_text(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "eval", "--help")
    assert code == 0 and "ertacache[vbench]" in out.replace("'", "").replace(" ", "")


def test_piped_tables_are_full_width_with_the_same_last_lines(results, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal width must not wrap piped output
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--lambda", "0.3,0.8",
                         "--set", "sampling.steps=6", "-q")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| lambda"))
    assert "predicted" not in header and "| pred. " in header and "| nfe " in header
    rows = [line for line in lines if line.startswith("| 0.")]
    assert len(rows) == 2 and all(len(r) == len(header) for r in rows)
    assert lines[-2].startswith("done: lambda 0.3: ") and lines[-1].startswith("run directory: ")
    assert "\n\n\n" not in out


def test_progress_lines_when_piped(monkeypatch):
    from ertacli import progress

    buf = io.StringIO()
    line = progress.LineProgress("generate", 3, interval=0.0, stream=buf)
    for _ in range(3):
        line.advance()
    line.close()
    got = buf.getvalue().splitlines()
    assert got[0].startswith("[progress] generate: 1/3, ") and "ETA" in got[0]
    assert got[2].startswith("[progress] generate: 3/3, ") and len(got) == 4


def test_timing_note_marks_noise_and_above_ideal():
    from ertacli.evaluation.timing import quartiles, timing_note

    assert quartiles([1.0, 2.0, 3.0]) == (1.5, 2.5) and quartiles([2.0]) == (2.0, 2.0)
    assert timing_note(2.0, 1.95, 2.05, 2.5) == ""
    assert timing_note(2.0, 1.5, 2.5, 2.5).startswith("noisy: IQR 1.50-2.50")
    assert "above ideal 1.60" in timing_note(1.7, 1.69, 1.71, 1.6)


@pytest.mark.parametrize("value", ["extrapolate-3", "extrapolate"])
def test_predictor_values_are_one_set(value):
    from ertacli.cli_options import predictor_overrides
    from ertacli.commands.overhead import PREDICTORS
    from ertacli.errors import UserError

    assert set(PREDICTORS) == {"reuse", "extrapolate-1", "extrapolate-2"}
    assert predictor_overrides("extrapolate-2", None) == ["cache.predictor=extrapolate", "cache.order=2"]
    if value == "extrapolate-3":
        with pytest.raises(UserError, match="choose from reuse, extrapolate-1, extrapolate-2"):
            predictor_overrides(value, None)


@pytest.mark.parametrize("value", ["inf", "nan", "-0.1"])
def test_lambda_must_be_finite_and_non_negative(results, monkeypatch, capsys, value):
    code, _, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--lambda", value)
    assert code == 2 and "--lambda must be >= 0" in err and len(err.strip().splitlines()) == 1
