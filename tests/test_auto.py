"""--method auto (ertacli/calibration/auto.py): schedule families, fit-part-only choices, budget, auto.csv."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from conftest import cli
from ertacli.calibration.schedules import (branch_counts, describe, family_sets, feasible_schedules, interval_cached,
                                           schedule_grid)
from ertacli.errors import UserError

FAST = ["--set", "sampling.steps=8", "--set", "eval.warmup=0", "--set", "eval.timing_rounds=1",
        "--set", "eval.timing_samples=1", "-q"]
PROMPTS = ["a red circle", "two blue squares", "a green line", "a yellow dot"]


def test_interval_schedules_exact_arithmetic():
    # interval 3 from step 1: two cached, one computed, until 10 are cached; the tail 15..18 falls out computed
    assert interval_cached(20, 10, 3, first=1) == [1, 2, 4, 5, 7, 8, 10, 11, 13, 14]
    assert interval_cached(20, 9, 2, first=1) == [1, 3, 5, 7, 9, 11, 13, 15, 17]
    assert interval_cached(20, 10, 2, first=1, tail=1) is None  # alternating holds at most 9 of steps 1..18
    # anchored at the tail: steps 17, 18 and 19 computed (tail 3), then cached / computed walking back
    assert interval_cached(20, 5, 2, tail=3) == [8, 10, 12, 14, 16]
    assert describe({"family": "interval", "i": 3, "first": 1}, {"cond": [1, 2, 4, 5, 7, 8, 10, 11, 13, 14]}, 20) \
        == "uniform(i=3,b=1,tail=5)"
    with pytest.raises(ValueError):
        interval_cached(20, 3, 1, first=1)


def test_even_window_and_branch_counts():
    assert family_sets(20, {"cond": 10}, "even", first=1, tail=1) == {"cond": [1, 3, 5, 7, 9, 10, 12, 14, 16, 18]}
    # window from step 2 (step 1 computed) to step 17 (the tail 17, 18, 19 computed)
    got = family_sets(20, {"cond": 6}, "even", first=3, tail=3)["cond"]
    assert len(got) == 6 and min(got) >= 3 and max(got) <= 16
    assert branch_counts(["cond", "uncond"], 21) == {"cond": 11, "uncond": 10}
    assert branch_counts(["cond", "uncond"], 20) == {"cond": 10, "uncond": 10}
    # two branches: exact per-branch counts, nested sets (the same set where the counts are equal)
    for params, sets in feasible_schedules(20, {"cond": 7, "uncond": 6}, schedule_grid(20)):
        assert len(sets["cond"]) == 7 and len(sets["uncond"]) == 6, params
        assert all(0 < k <= 19 for s in sets.values() for k in s)
        if params["family"] == "interval":
            assert set(sets["uncond"]) <= set(sets["cond"])
    keys = [tuple(s["cond"]) for _, s in feasible_schedules(20, {"cond": 8}, schedule_grid(20))]
    assert len(keys) == len(set(keys))  # identical sets are tried once


@pytest.fixture(scope="module")
def auto_env(tiny_flux):
    """(sampler, samples, profile, identity) on tiny-flux-random, 4 prompts x 1 seed, 6 steps."""
    from ertacli.backbones.sampler import Sampler
    from ertacli.calibration.profile import record_profile
    from ertacli.calibration.samples import Samples

    loaded, recipe = tiny_flux
    sampler = Sampler.from_recipe(loaded, recipe)
    samples = Samples.grid(PROMPTS, [0])
    profile = record_profile(sampler, samples, "hidden")
    ident = {"recipe": recipe.name, "recipe_key": "k", "model_id": "m", "profile_run": None}
    return sampler, samples, profile, ident


@pytest.fixture(scope="module")
def auto_run(auto_env):
    return run_auto(auto_env, trials=12)


def run_auto(env, trials=12):
    from ertacli.calibration.auto import AutoSettings, auto_search

    sampler, samples, profile, ident = env
    return auto_search(sampler, samples, 2, ident, AutoSettings(trials=trials))


def test_velocity_profile_is_derived_from_a_hidden_one(auto_env):
    from ertacli.calibration.auto import space_profile
    from ertacli.calibration.profile import record_profile

    sampler, samples, profile, _ = auto_env
    rec = record_profile(sampler, samples, "velocity")
    got = space_profile(profile, "velocity")
    for b in rec.stats:
        for key in ("R", "dR"):
            assert got.stats[b][key] == pytest.approx(rec.stats[b][key], rel=1e-4)


def test_auto_beats_or_ties_its_plain_lambda_candidate_and_respects_budget(auto_env, auto_run):
    plan, rows = auto_run
    assert 0 < len(rows) <= 12
    lam = next(r for r in rows if r["placement"].startswith("lambda") and r["predictor"] == "x1"
               and r["space"] == "hidden")
    assert plan.auto["holdout_psnr"] >= lam["holdout_psnr"]
    assert plan.auto["holdout_psnr"] == max(r["holdout_psnr"] for r in rows)
    win = next(r for r in rows if r["trial"] == plan.auto["winner"]["trial"])
    assert win["fit_psnr"] == plan.auto["fit_psnr"] and plan.auto["margin_db"] >= 0
    assert plan.method == "auto" and plan.n_cached >= 2 and plan.residual in ("hidden", "velocity")
    assert plan.auto["summary"].startswith("auto: won ")
    small, rows3 = run_auto(auto_env, trials=3)
    assert len(rows3) == 3
    with pytest.raises(UserError, match="--auto-trials must be >= 1"):
        run_auto(auto_env, trials=0)


def test_every_choice_is_made_on_the_fit_part(auto_env, auto_run, monkeypatch):
    """Changing the held-out references changes scores only: the fitted parts of each candidate stay."""
    from ertacli.calibration import auto

    made = auto.Trials.__init__

    def shifted(self, sampler, hold_set, ref_hold, budget, advance):
        ref_hold.media = (ref_hold.media + 0.05).clamp(0, 1)
        ref_hold.latents = ref_hold.latents + 0.05 * ref_hold.latents.std()
        made(self, sampler, hold_set, ref_hold, budget, advance)

    monkeypatch.setattr(auto.Trials, "__init__", shifted)
    _, a = auto_run
    _, b = run_auto(auto_env, trials=12)
    key = lambda r: (r["stage"], r["space"], r["predictor"], r["placement"], r["gain"], r["adjust"], r["rectify"])
    fitted = lambda r: (r["cached"], json.dumps(r["plan"].rectify, sort_keys=True),
                        json.dumps(r["plan"].predictor, sort_keys=True), r["plan"].adjusted_sigmas)
    fa, fb = {key(r): fitted(r) for r in a}, {key(r): fitted(r) for r in b}
    common = set(fa) & set(fb)
    assert any(k[0] == "families" and k[3].startswith("lambda") for k in common)
    for k in common:
        assert fa[k] == fb[k], k
    sa, sb = {key(r): r["holdout_psnr"] for r in a}, {key(r): r["holdout_psnr"] for r in b}
    assert all(sa[k] != sb[k] for k in common)


def test_search_method_auto_writes_auto_csv_and_an_ordinary_plan(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--method", "auto", "--target-nfe", "4",
                         "--auto-trials", "6", "--set", "sampling.steps=8")
    assert code == 0, err
    (run,) = (results / "tiny-flux-random").glob("search-*")
    folder = run / "plans" / "auto"
    rows = list(csv.DictReader(open(folder / "auto.csv")))
    assert 0 < len(rows) <= 6 and sum(r["winner"] == "True" for r in rows) == 1
    data = json.loads((folder / "plan.json").read_text())
    assert data["method"] == "auto" and data["auto"]["budget"] == 6 and "winner" in data["auto"]
    assert "auto: won" in out
    code, out, err = cli(monkeypatch, capsys, "generate", "-m", "tiny-flux-random", "--plan", str(folder),
                         "--prompt", "a red circle", "--set", "sampling.steps=8", "-q")
    assert code == 0, err


def test_auto_trials_zero_is_a_one_line_error(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--method", "auto",
                         "--auto-trials", "0")
    assert code == 2 and "--auto-trials must be >= 1" in err and len(err.strip().splitlines()) == 1


def test_methods_list_auto(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "methods")
    assert code == 0 and "auto" in out


def test_fit_reports_phi_for_every_adjusting_candidate(results, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "search", "-m", "tiny-flux-random", "--lambda", "0.5", *FAST)
    assert code == 0, err
    (run,) = (results / "tiny-flux-random").glob("search-*")
    code, out, err = cli(monkeypatch, capsys, "fit", "-m", "tiny-flux-random", "--plan", str(run), *FAST)
    assert code == 0, err
    (fit,) = (results / "tiny-flux-random").glob("fit-*")
    data = json.loads((fit / "fit.json").read_text())
    adjusting = [c for c in data["candidates"] if c["adjust"]]
    assert adjusting and all(c["phi_summary"] is not None and c["phi"] for c in adjusting)
    assert all(c["phi_summary"] is None for c in data["candidates"] if not c["adjust"])


def test_calibrate_method_auto_gives_an_ordinary_plan(tiny_flux, tmp_path):
    """ertacli.calibrate(method="auto") in memory; the plan runs through enable_cache with its own NFE."""
    import torch

    import ertacli

    loaded, recipe = tiny_flux
    encode = lambda prompts: loaded.encoder.pipeline_kwargs(list(prompts), "")
    kwargs = dict(num_inference_steps=6, height=32, width=32, guidance_scale=3.5)
    plan = ertacli.calibrate(loaded.pipe, PROMPTS, seeds=[0], nfe=4, method="auto", prompt_encoder=encode,
                             auto_trials=4, save_to=str(tmp_path / "plan"), **kwargs)
    assert plan.method == "auto" and plan.nfe <= 4 and plan.auto["trials"] <= 4
    assert (tmp_path / "plan" / "auto.csv").is_file() and ertacli.load_plan(tmp_path / "plan").auto == plan.auto
    with ertacli.cached(loaded.pipe, plan):
        loaded.pipe(generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **encode(["a dot"]),
                    **kwargs)
        assert ertacli.last_call_stats(loaded.pipe)["nfe"] == plan.nfe


def test_fit_placement_moves_use_the_fit_part_only(auto_env):
    """fit_plan's --optimize-placement: the held-out references never change the moves it makes."""
    from ertacli.calibration.fit import FitSettings, fit_plan
    from ertacli.calibration.samples import split_holdout
    from ertacli.calibration.search import search_plan
    from ertacli.recipe import CacheCfg

    sampler, samples, profile, ident = auto_env
    plan = search_plan(sampler, samples, profile, 0.5, CacheCfg(predictor="extrapolate"), ident)
    settings = FitSettings(adjust="off", rectify="off", gain="off", optimize_placement=True, placement_trials=4)
    _, hold = split_holdout(samples, samples.unique_prompts(), 0.25)
    ref = profile.latents.clone()
    ref[hold] = 0.0
    a, _ = fit_plan(sampler, plan, profile, samples, profile.latents, settings, 0.25)
    b, _ = fit_plan(sampler, plan, profile, samples, ref, settings, 0.25)
    assert a.cached_steps == b.cached_steps and a.placement == b.placement
    assert a.fit["candidates"][0]["holdout_mse"] != b.fit["candidates"][0]["holdout_mse"]


def test_ties_go_to_the_cheaper_then_the_simpler_candidate():
    from ertacli.calibration.auto import rank_key

    row = lambda trial, psnr, nfe=10, pred="x2", space="velocity", gain="1", adj=False: {
        "trial": trial, "holdout_psnr": psnr, "nfe": nfe, "predictor": pred, "space": space, "gain": gain,
        "adjust": adj, "rectify": False}
    rows = [row(1, 30.0), row(2, 30.0, pred="reuse", gain="-"), row(3, 30.0, nfe=9), row(4, 31.0),
            row(5, 30.0, space="hidden"), row(6, 30.0, pred="x1"), row(7, 30.0, gain="fitted"),
            row(8, 30.0, adj=True), row(9, float("inf"))]
    assert [r["trial"] for r in sorted(rows, key=rank_key)] == [9, 4, 3, 2, 6, 5, 1, 8, 7]


def test_the_threshold_search_never_sees_the_held_out_part(auto_env):
    """A split profile: its stats are the two parts' sums, and search_plan's placement depends on the fit part only
    (corrupting the held-out part's statistics changes nothing it decides)."""
    from ertacli.calibration.profile import Profile, fit_part, record_profile
    from ertacli.calibration.search import search_plan
    from ertacli.recipe import CacheCfg

    sampler, samples, whole, ident = auto_env
    split = record_profile(sampler, samples, "hidden", holdout=0.25)
    fit_set, fit_prof = fit_part(split, samples, 0.25)
    assert len(fit_set) == 3 and split.split["held_out"] == [3]
    alone = record_profile(sampler, fit_set, "hidden").stats
    for b in split.stats:
        assert fit_prof.stats[b]["R"] == pytest.approx(alone[b]["R"], rel=1e-5)
        assert split.stats[b]["R"] == pytest.approx(whole.stats[b]["R"], rel=1e-5)
    cfg = CacheCfg(predictor="extrapolate")
    a = search_plan(sampler, samples, split, 0.5, cfg, ident)
    bent = dataclasses.replace(split, stats={b: {k: [10 * x for x in v] for k, v in rows.items()}
                                             for b, rows in split.stats.items()})
    b = search_plan(sampler, samples, bent, 0.5, cfg, ident)
    assert a.cached_steps == b.cached_steps and a.search_errors == b.search_errors
    assert a.calibration["digest"] == samples.digest() and a.calibration["searched_samples"] == 3
    with pytest.raises(UserError, match="split with calibration.holdout 0.25"):
        fit_part(split, samples, 0.5)
    with pytest.raises(UserError, match="predates the held-out split"):
        Profile.from_json({k: v for k, v in split.to_json().items() if k != "split"})
