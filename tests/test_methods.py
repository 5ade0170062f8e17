"""Method presets (--method), peers' best-of-grid at matched NFE, and sweep --nfe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli
from ertacli.evaluation.peer_tuning import pick
from ertacli.errors import UserError
from ertacli.presets import METHODS, method_overrides, preset_of
from ertacli.recipe import resolve_recipe, with_overrides

FAST = ["--set", "sampling.steps=8", "--set", "eval.warmup=0", "--set", "eval.timing_rounds=1",
        "--set", "eval.timing_samples=1", "-q"]


def test_presets_resolve_and_are_recognised():
    base = resolve_recipe("tiny-flux-random")
    assert preset_of(base) == "ertacache-x1"  # the shipped default (README "Methods"); the paper is one flag away
    for name in METHODS:
        r = with_overrides(base, method_overrides(name))
        assert preset_of(r) == name
    x2p = resolve_recipe("tiny-flux-random", method_overrides("ertacache-x2p"))
    assert (x2p.cache.predictor, x2p.cache.order, x2p.fit.optimize_placement) == ("extrapolate", 2, True)
    assert preset_of(resolve_recipe("tiny-flux-random", ["cache.predictor=extrapolate", "cache.abscissa=index"])) \
        == "custom"


def test_set_wins_over_method_and_bare_off_is_a_toggle():
    r = resolve_recipe("tiny-flux-random", method_overrides("ertacache-x2") + ["cache.order=1", "fit.adjust=off"])
    assert r.cache.order == 1 and r.fit.adjust == "off"


def test_unknown_method_is_a_user_error(monkeypatch, capsys):
    with pytest.raises(UserError, match="did you mean ertacache-x2"):
        method_overrides("ertacache-x3")
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--method", "taylor")
    assert code == 2 and "unknown --method 'taylor'" in err and len(err.strip().splitlines()) == 1


def test_peer_pick_is_best_quality_at_matched_nfe():
    tried = [{"setting": "a", "nfe": 10, "psnr": 30.0}, {"setting": "b", "nfe": 10, "psnr": 35.0},
             {"setting": "c", "nfe": 12, "psnr": 50.0}, {"setting": "d", "nfe": 8, "psnr": 20.0}]
    assert pick(tried, 10)["setting"] == "b"  # never more NFE than the target, best PSNR among matches
    assert pick(tried, 11)["setting"] == "b"  # 10 is within one call of 11
    assert pick(tried, 9)["setting"] == "d"  # 8 is within one call of 9
    assert pick(tried + [{"setting": "e", "nfe": 5, "psnr": 9.0}], 7)["setting"] == "e"  # none matched: nearest below
    assert pick(tried, 7) is None  # no setting reaches NFE <= 7: no row with more NFE than the target


def test_sweep_matched_nfe_marks_best_calibrated(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "sweep", "-m", "tiny-flux-random", "--nfe", "4",
                         "--methods", "ertacache,ertacache-x1", "--samples", "1", *FAST)
    assert code == 0, err
    (run,) = (results / "tiny-flux-random").glob("sweep-*")
    import pandas as pd

    df = pd.read_csv(run / "sweep.csv")
    assert list(df["method"]) == ["ertacache", "ertacache-x1"] and (df["nfe"] == 4).all()
    assert df["best_calibrated"].sum() == 1
    assert df.loc[df["best_calibrated"], "calib_psnr"].item() == df["calib_psnr"].max()
    plans = [json.loads((Path(p) / "plan.json").read_text()) for p in df["plan"]]
    assert [p["predictor"]["kind"] for p in plans] == ["reuse", "extrapolate"]
    assert (run / "pareto.png").is_file()
    code, out, err = cli(monkeypatch, capsys, "report", str(run))
    assert code == 0 and out.count("| 4 ") >= 2 and "no peer ran" in out  # no --compare: no peer rows


def test_goal_cells_toy_arithmetic():
    """Best calibrated minus the best peer with NFE <= target; our uniform cache and peers above the target never
    count as the peer; the margin decides the verdict."""
    import pandas as pd

    from ertacli.runs.report import compact, goal_cells

    rows = [("auto", 10, 10, 40.0, True), ("ertacache", 10, 10, 41.0, False), ("uniform cache", 10, 10, 44.0, False),
            ("TeaCache", 10, 9.5, 38.5, False), ("MagCache", 10, 11, 45.0, False), ("SmoothCache", 10, None, None, False),
            ("ertacache-x1", 8, 8, 30.0, True), ("TaylorSeer", 8, 8, 29.5, False)]
    df = pd.DataFrame(rows, columns=["method", "target_nfe", "nfe", "psnr", "best_calibrated"])
    got = goal_cells(df).to_dict("records")
    assert [g["NFE"] for g in got] == [10, 8]
    assert got[0]["best peer"].startswith("TeaCache") and got[0]["margin dB"] == 1.5
    assert got[0]["goal (>= 1 dB)"] == "holds" and "MagCache NFE 11 45.00 dB" in got[0][
        "peer rows above the target NFE (not matched)"]
    assert got[1]["margin dB"] == 0.5 and got[1]["goal (>= 1 dB)"] == "does not hold"
    assert goal_cells(df, goal_db=0.5).to_dict("records")[1]["goal (>= 0.5 dB)"] == "holds"
    assert compact(df)["method"].iloc[0] == "**auto** (best calibrated)"


def test_report_refuses_what_is_not_a_matched_sweep(results, monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2 and "no sweep.csv" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "sweep.csv").write_text("method,lambda,psnr\nertacache,0.1,30\n")
    code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2 and "no column 'target_nfe'" in err
    head = "method,target_nfe,nfe,psnr,best_calibrated\n"
    for body, expect in (("", "not a readable sweep table"), (head + "auto,abc,3,30,True\n", "'target_nfe' holds 'abc'"),
                         (head + "auto,inf,3,30,True\n", "'target_nfe' holds"),
                         (head + "auto,6,3,oops,True\n", "'psnr' holds 'oops'")):
        (tmp_path / "sweep.csv").write_text(body)
        code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path))
        assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "sweep.csv").write_text(head + "auto,6,3,30,True\nTeaCache,6,,,False\n")  # a peer that did not run
    for goal in ("nan", "inf", "1e308"):
        code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path), "--goal-db", goal)
        assert code == 2 and "--goal-db must be a finite margin" in err
    code, out, _ = cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 0 and "no peer ran" in out


def test_sweep_nfe_out_of_range(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "sweep", "-m", "tiny-flux-random", "--nfe", "1", *FAST)
    assert code == 2 and "--nfe 1 is out of range" in err
