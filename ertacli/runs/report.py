"""A finished matched-NFE sweep as the README shows it: the compact table and the per-cell goal, from sweep.csv alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import pandas as pd

OURS = ("ertacache", "auto", "uniform cache")  # rows of this tool; every other row is a peer
NEEDED = ("method", "target_nfe", "nfe", "psnr", "best_calibrated")


def read_sweep(run_dir: str | Path) -> "pd.DataFrame":
    """sweep.csv of a complete matched-NFE sweep run (`sweep --nfe` or `--compare` with the recipe's search.nfe)."""
    import pandas as pd

    path = Path(run_dir) / "sweep.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a sweep run directory (no sweep.csv); give a results/NAME/sweep-... folder")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:  # empty, binary or malformed
        raise UserError(f"{path} is not a readable sweep table ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
                        f"; re-run the sweep")
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r}: report reads matched-NFE sweeps "
                        f"(`ertacache sweep --compare` with search.nfe, or --nfe); re-run one")
    for col in ("target_nfe", "nfe", "psnr"):
        values = pd.to_numeric(df[col], errors="coerce")
        blank_ok = values.notna() | (df[col].isna() if col != "target_nfe" else False)  # a peer that did not run
        bad = df[col][~blank_ok | (values.map(lambda v: not math.isfinite(v)) if col == "target_nfe" else False)]
        if len(bad):
            raise UserError(f"{path}: column {col!r} holds {bad.iloc[0]!r}, not a number; re-run the sweep")
        df[col] = values
    return df


def is_ours(method) -> bool:
    return str(method).startswith(OURS)


def _num(v) -> float:
    import pandas as pd

    out = pd.to_numeric(v, errors="coerce")
    return float(out) if pd.notna(out) else float("nan")


def goal_cells(df: "pd.DataFrame", goal_db: float = 1.0) -> "pd.DataFrame":
    """Per target NFE: the best calibrated plan (chosen on calibration PSNR) against the best peer row with NFE <=
    target on the eval prompts; the margin, whether it is >= `goal_db`, and the peer rows above the target."""
    import pandas as pd

    rows = []
    for nfe, g in df.groupby("target_nfe", sort=False):
        best = g[g["best_calibrated"].astype(str) == "True"]
        b = best.iloc[0] if len(best) else None
        peers = g[~g["method"].map(is_ours) & g["psnr"].map(_num).notna()]
        matched, over = peers[peers["nfe"].map(_num) <= nfe], peers[peers["nfe"].map(_num) > nfe]
        top = matched.loc[matched["psnr"].map(_num).idxmax()] if len(matched) else None
        margin = _num(b["psnr"]) - _num(top["psnr"]) if b is not None and top is not None else float("nan")
        verdict = "holds" if margin >= goal_db else ("does not hold" if margin == margin else "no peer ran")
        rows.append({
            "NFE": int(nfe), "best calibrated": b["method"] if b is not None else "-",
            "its PSNR": round(_num(b["psnr"]), 2) if b is not None else None,
            "best peer": f"{top['method']} ({top.get('setting', '-')}, NFE {_num(top['nfe']):g})" if top is not None
            else "-",
            "peer PSNR": round(_num(top["psnr"]), 2) if top is not None else None,
            "margin dB": round(margin, 2), f"goal (>= {goal_db:g} dB)": verdict,
            "peer rows above the target NFE (not matched)": "; ".join(
                f"{r['method']} NFE {_num(r['nfe']):g} {_num(r['psnr']):.2f} dB" for _, r in over.iterrows()) or "-"})
    return pd.DataFrame(rows)


def _cell(v, digits: int | None):
    """A number rounded to `digits`, a text (e.g. a metric's 'missing: reason') as it is, else None."""
    x = _num(v)
    if x == x:
        return x if digits is None else round(x, digits)
    return v if isinstance(v, str) else None


def _speedup(r: dict, key: str = "speedup") -> str:
    s = _num(r.get(key))
    if s != s:
        return "-"
    q1, q3 = _num(r.get(f"{key}_q1")), _num(r.get(f"{key}_q3"))
    text = f"{s:.2f}" + (f" [{q1:.2f}-{q3:.2f}]" if q1 == q1 and q3 == q3 else "")
    noisy = key == "speedup" and isinstance(r.get("timing_note"), str) and r["timing_note"]
    return text + ("*" if noisy else "")


def compact(df: "pd.DataFrame") -> "pd.DataFrame":
    """The sweep table with the README's columns: method (best calibrated in bold), setting, NFE, ideal and measured
    speedup [IQR] (* = a noisy timing, see sweep.csv's timing_note), PSNR, SSIM, LPIPS, digit-acc, calibration PSNR."""
    import pandas as pd

    recs = df.to_dict("records")
    col = lambda name, digits=None: [_cell(r.get(name), digits) for r in recs]
    cpu = {"CPU-time speedup [IQR]": [_speedup(r, "cpu_speedup") for r in recs]} if "cpu_speedup" in df else {}
    return pd.DataFrame({
        "NFE target": df["target_nfe"],
        "method": [f"**{r['method']}** (best calibrated)" if str(r["best_calibrated"]) == "True" else r["method"]
                   for r in recs],
        "setting": [r.get("setting") if isinstance(r.get("setting"), str) else "-" for r in recs],
        "NFE": col("nfe"), "ideal": col("ideal_speedup", 3), "measured speedup [IQR]": [_speedup(r) for r in recs],
        **cpu,
        "PSNR": col("psnr", 2), "SSIM": col("ssim", 4), "LPIPS": col("lpips", 4), "digit-acc": col("digit-acc", 3),
        "calibration PSNR": col("calib_psnr", 2),
        "note": [r["note"] if isinstance(r.get("note"), str) and r["note"].startswith(("not run", "no setting"))
                 else "" for r in recs]})


def render(run_dir: str | Path, goal_db: float = 1.0) -> str:
    """The report as Markdown: the compact table, each missing metric's reason once, then the per-cell goal."""
    from .tables import markdown, split_missing

    if not (math.isfinite(goal_db) and abs(goal_db) <= 100):
        raise UserError(f"--goal-db must be a finite margin in dB between -100 and 100, got {goal_db:g}")
    df = read_sweep(run_dir)
    table, notes = split_missing(compact(df))
    parts = [markdown(table)]
    parts += [f"- {n}" for n in notes]
    parts += ["", markdown(goal_cells(df, goal_db))]
    return "\n".join(parts) + "\n"
