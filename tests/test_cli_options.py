"""Option names: one meaning per name across every command, the old spellings, `--version`."""

from __future__ import annotations

import importlib.metadata

import pytest
import typer

from conftest import cli
from ertacli.cli import app
from ertacli.cli_options import DEPRECATED, RETIRED

ALLOWED_DEFAULTS = {  # names whose default differs between commands (the meaning does not), and why
    "--samples": "demo is the quick tour: 8 samples unless told (the published `make demo` table); sweep and bench "
                 "evaluate every eval sample unless told. On all three: evaluate the first N eval samples.",
    "--ablation": "demo adds the Table 3 rows by default (seconds on the tiny model); bench at full size only when "
                  "asked (each row is one more fit and eval on a GPU). On both: add the paper's Table 3 rows.",
    "--no-ablation": "the off switch of --ablation (above).",
}
SAME_VALUES = {  # hidden deprecated aliases whose name another command shows: each value means what it means there
    ("search", "--nfe"): "one NFE target (transformer calls per sample), the quantity `sweep --nfe` compares several "
                         "of; warns, and refuses two values, naming --target-nfe",
    ("overhead", "--predictor"): "the predictor names `search --predictor` takes; warns, naming --predictors",
}


def commands() -> dict:
    return dict(typer.main.get_command(app).commands)


def value_type(p) -> str:
    """The option's value type as --help shows it (Typer's own click copy, or click's ParamType)."""
    return p.bare_type() if hasattr(p, "bare_type") else p.type.name


def option_table(cmds: dict | None = None) -> dict[str, list[tuple[str, dict, bool]]]:
    """{option name: [(command, meaning, hidden)]}; the meaning is what a reader of --help learns from the option:
    its value type, flag or not, repeatable or not, its help text and its default (None when it is required)."""
    table: dict[str, list] = {}
    for command, cmd in (cmds or commands()).items():
        for p in cmd.params:
            if not p.opts or not p.opts[0].startswith("-"):
                continue  # a positional argument: no name to share
            meaning = {"type": value_type(p), "flag": bool(p.is_flag), "repeatable": bool(p.multiple),
                       "help": p.help, "default": None if p.required else p.default}
            for name in [*p.opts, *p.secondary_opts]:
                table.setdefault(name, []).append((command, meaning, bool(p.hidden)))
    return table


def clashes(table: dict, deprecated=DEPRECATED, retired=RETIRED) -> list[str]:
    """Every name with two meanings: two visible meanings (defaults aside where ALLOWED_DEFAULTS says why), a hidden
    option that is neither a deprecated alias nor a retired name, or a deprecated alias of a name another command
    shows, unless SAME_VALUES says why its values mean the same there."""
    out = []
    for name, rows in sorted(table.items()):
        strip = (lambda m: {k: v for k, v in m.items() if k != "default"}) if name in ALLOWED_DEFAULTS else dict
        visible = [(c, strip(m)) for c, m, hidden in rows if not hidden]
        if any(m != visible[0][1] for _, m in visible[1:]):
            out.append(f"{name}: " + "; ".join(f"{c} {m}" for c, m in visible))
        for command, _, hidden in rows:
            if not hidden or name in retired.get(command, {}):
                continue
            if name not in deprecated.get(command, {}):
                out.append(f"{command} {name}: hidden, but neither in DEPRECATED nor in RETIRED (ertacli/cli_options.py)")
            elif visible and (command, name) not in SAME_VALUES:
                out.append(f"{command} {name}: a deprecated alias of a name {visible[0][0]} shows with another meaning")
    return out


def test_one_meaning_per_option_name():
    table = option_table()
    assert len([c for c, _, _ in table["--model"]]) >= 10 and len(table) >= 40  # the table is real, not empty
    found = clashes(table)
    assert not found, "\n".join(found)


def test_the_finder_catches_the_old_two_meanings():
    """What the commands had at 3d04174: each defect of the class is flagged, the shared --set is not."""
    gate = {"type": "float", "flag": False, "repeatable": False, "help": "Quality gate: exit 1 if the mean PSNR is "
            "lower.", "default": None}
    pick = {**gate, "help": "Deprecated: --pick-psnr."}
    one = {"type": "str", "flag": False, "repeatable": False, "help": "Cached-step predictor.", "default": None}
    several = {**one, "repeatable": True}
    method = {"type": "str", "flag": False, "repeatable": False, "help": "Method preset.", "default": None}
    sets = {"type": "str", "flag": False, "repeatable": True, "help": "Override a recipe field.", "default": None}
    old = {"--min-psnr": [("eval", gate, False), ("sweep", pick, True)],
           "--predictor": [("search", one, False), ("overhead", several, False)],
           "--method": [("search", method, False), ("bench", {**method, "default": "ertacache"}, False)],
           "--set": [("search", sets, False), ("eval", sets, False)]}
    found = clashes(old, deprecated={"sweep": {"--min-psnr": "--pick-psnr"}}, retired={})
    assert [f.split(":")[0] for f in found] == ["--method", "sweep --min-psnr", "--predictor"]
    assert clashes(old, deprecated={}, retired={"sweep": {"--min-psnr": "--pick-psnr"}})[-1].startswith("--predictor")


def test_repeatable_options_say_so():
    """A list-valued option tells how to give several values; a single-valued one never claims to take several."""
    bad = [f"{c} {name}" for name, rows in option_table().items() if name.startswith("--")
           for c, m, hidden in rows if not hidden and m["repeatable"] != ("repeat" in (m["help"] or ""))]
    assert not bad, bad


@pytest.mark.parametrize("args,warning", [
    (["search", "--nfe", "8"], "`search --nfe` is deprecated; use --target-nfe"),
    (["search", "--order", "2"], "`search --order` is deprecated; use --predictor extrapolate-N"),
    (["overhead", "--predictor", "reuse", "--predictor", "extrapolate-1"],
     "`overhead --predictor` is deprecated; use --predictors"),
])
def test_deprecated_alias_still_parses_and_warns(monkeypatch, capsys, args, warning):
    """The old spelling is accepted and warned about; the run then goes on (here to the unknown recipe's error)."""
    code, out, err = cli(monkeypatch, capsys, *args, "-m", "no-such-recipe")
    assert warning in " ".join(err.split()) and code == 2 and "no-such-recipe" in err.splitlines()[-1]


def test_estimate_old_spellings_work_with_a_warning(monkeypatch, capsys):
    base = ["estimate", "--n-prompts", "10", "--baseline-seconds", "2", "--cached-seconds", "1"]
    code, out, err = cli(monkeypatch, capsys, *base, "--seeds", "1", "--calibration-prompts", "0", "--gpus", "1,2")
    assert code == 0 and "`estimate --seeds` is deprecated; use --n-seeds" in err
    assert "`estimate --calibration-prompts` is deprecated; use --n-calibration-prompts" in " ".join(err.split())
    assert out.strip().splitlines()[-1] == "done: 1 GPUs: 0.00833 h; 2 GPUs: 0.00417 h"
    code, again, err = cli(monkeypatch, capsys, *base, "--n-seeds", "1", "--gpus", "1", "--gpus", "2")
    assert code == 0 and not err and again.strip().splitlines()[-1] == out.strip().splitlines()[-1]
    code, out, err = cli(monkeypatch, capsys, *base, "--n-seeds", "1", "--seeds", "2")
    assert code == 2 and "give --n-seeds once (`estimate --seeds` is its deprecated name)" in err


def test_search_takes_one_nfe_target(monkeypatch, capsys):
    for args in (["--nfe", "8,6"], ["--nfe", "8", "--target-nfe", "6"]):
        code, out, err = cli(monkeypatch, capsys, "search", "-m", "no-such-recipe", *args)
        assert code == 2 and "search takes one NFE target: --target-nfe N (`sweep --nfe` compares several)" in err


@pytest.mark.parametrize("command,old", [(c, o) for c, olds in RETIRED.items() for o in olds])
def test_retired_names_stop_with_one_line(results, monkeypatch, capsys, command, old):
    """A name that meant something else than the same name elsewhere: one line naming the new one, exit 2, no run."""
    (param,) = [p for p in commands()[command].params if old in p.opts]
    assert param.hidden
    extra = ["--baseline-seconds", "1", "--cached-seconds", "1"] if command == "estimate" else []
    code, out, err = cli(monkeypatch, capsys, command, old, *([] if param.is_flag else ["30"]), *extra)
    assert code == 2 and err.strip().splitlines() == [f"error: `{command} {old}` was renamed: use {RETIRED[command][old]}"]
    assert not results.exists()


def test_sweep_pick_options_named_in_their_errors(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "sweep", "-m", "tiny-flux-random", "--pick-speedup", "2",
                         "--pick-psnr", "30", "-q")
    assert code == 2 and "give one of --pick-speedup or --pick-psnr, not both" in err


def test_version(monkeypatch, capsys):
    import ertacli

    code, out, err = cli(monkeypatch, capsys, "--version")
    assert code == 0 and out == f"ertacache {ertacli.__version__}\n" and not err
    assert ertacli.__version__ == importlib.metadata.version("ertacache")
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["ertacache"] == scripts["ertacli"] == "ertacli.cli:main"  # `ertacli --version` is the same
