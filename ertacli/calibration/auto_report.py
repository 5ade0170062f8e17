"""auto's report: candidate labels, the winner's settings and margin, the summary line and auto.csv."""

from __future__ import annotations

import math

from ..choices import AUTO_PREDICTORS as PREDICTORS
from ..plan import Plan


def label(r: dict) -> str:
    """e.g. x2/velocity/uniform(i=2,b=1,tail=2)+gain+adjust."""
    parts = [f"{r['predictor']}/{r['space']}/{r['placement']}"]
    parts += [name for name, on in (("gain", r["gain"] == "fitted"), ("adjust", r["adjust"]),
                                    ("rectify", r["rectify"])) if on]
    return "+".join(parts)


def settings_of(r: dict) -> dict:
    kind, order = PREDICTORS[r["predictor"]]
    return {"label": label(r), "space": r["space"], "predictor": kind, "order": order, "placement": r["placement"],
            "lambda": r["lambda"], "gain": r["gain"], "adjust": r["adjust"], "rectify": r["rectify"],
            "stage": r["stage"], "trial": r["trial"]}


def margin_db(best: dict, runner: dict | None) -> float | None:
    """Held-out PSNR of the winner minus the runner-up's (None without a finite runner-up)."""
    if runner is None or not math.isfinite(best["holdout_psnr"] - runner["holdout_psnr"]):
        return None
    return best["holdout_psnr"] - runner["holdout_psnr"]


def summary(best: dict, runner: dict | None) -> str:
    """The one line the CLI prints: what won, its held-out PSNR and the margin over the runner-up."""
    line = f"auto: won {label(best)}, held-out PSNR {best['holdout_psnr']:.2f} dB"
    if runner is not None:
        margin = margin_db(best, runner)
        line += f" vs runner-up {label(runner)} {runner['holdout_psnr']:.2f} dB"
        line += f" ({margin:+.2f} dB)" if margin is not None else ""
    return line


CSV_COLUMNS = ("trial", "stage", "predictor", "space", "placement", "lambda", "gain", "adjust", "rectify",
               "cached", "nfe", "holdout_psnr", "db_vs_best", "holdout_mse", "fit_psnr", "winner", "phi_summary")


def table_rows(rows: list[dict], plan: Plan) -> list[dict]:
    """auto.csv: every scored candidate (settings, held-out PSNR and MSE, dB behind the winner, the fit part's
    PSNR for the winner and runner-up); the winner marked."""
    win, best = plan.auto["winner"]["trial"], plan.auto["holdout_psnr"]
    out = []
    for r in rows:
        behind = r["holdout_psnr"] - best
        phi = r.get("phi_summary")
        out.append({**{k: r.get(k) for k in CSV_COLUMNS}, "db_vs_best": 0.0 if math.isnan(behind) else round(behind, 4), "winner": r["trial"] == win, "phi_summary": None if phi is None else
                    f"{phi['zero']} at 0, {phi['partial']} in (0,1), {phi['one']} at 1 of {phi['cached']}"})
    return out


def save_auto(plan: Plan, rows: list[dict], folder) -> None:
    """Write the plan folder: plan.json and auto.csv."""
    import csv
    from pathlib import Path

    folder = Path(plan.save(folder))
    with open(folder / "auto.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        w.writerows(table_rows(rows, plan))
