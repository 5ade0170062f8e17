"""The headline each command ends with (`done: ...`), and the speedup shown with its spread."""

from __future__ import annotations

import math
from typing import Any


def num(value: Any, fmt: str = ".4g") -> str:
    """A number for a sentence ('-' when missing or not a number)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "missing" if isinstance(value, str) and value.startswith("missing") else "-"
    return "-" if math.isnan(f) else format(f, fmt)


def speedup_text(row: dict) -> str:
    """'2.05x [IQR 1.98-2.11]', with the timing note when the number cannot be ranked, and the process-CPU-time
    speedup when it was timed ('; CPU time 2.01x [IQR 1.99-2.03]')."""
    text = _with_iqr(row, "speedup") + (f" ({row['timing_note']})" if _text(row.get("timing_note")) else "")
    if row.get("cpu_speedup") is not None and not _nan(row.get("cpu_speedup")):
        text += f"; CPU time {_with_iqr(row, 'cpu_speedup')}"
    return text


def _with_iqr(row: dict, key: str) -> str:
    text = f"{num(row.get(key), '.2f')}x"
    if row.get(f"{key}_q1") is not None and not _nan(row.get(f"{key}_q1")):
        text += f" [IQR {num(row[f'{key}_q1'], '.2f')}-{num(row[f'{key}_q3'], '.2f')}]"
    return text


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def with_spread(df):
    """A display copy: speedup (and the CPU-time speedup, when timed) as 'median [q1-q3]', the wall-time one with a
    '*' when its note says it cannot be ranked."""
    out = df.copy()
    for key in ("speedup", "cpu_speedup"):
        if f"{key}_q1" not in df.columns:
            continue
        marked = key == "speedup"
        out[key] = [_spread_cell(r, key, marked) for r in df.to_dict("records")]
        out = out.drop(columns=[f"{key}_q1", f"{key}_q3"])
    return out


def _spread_cell(r: dict, key: str, marked: bool) -> str:
    if _nan(r.get(key)) or r.get(key) is None:
        return "-"
    mark = "*" if marked and _text(r.get("timing_note")) else ""
    if _nan(r.get(f"{key}_q1")) or r.get(f"{key}_q1") is None:
        return f"{r[key]:.2f}{mark}"
    return f"{r[key]:.2f} [{r[f'{key}_q1']:.2f}-{r[f'{key}_q3']:.2f}]{mark}"


def quality(row: dict, metrics: list[str]) -> str:
    """'psnr 48.03, ssim 0.9997' for the metrics a row holds."""
    return ", ".join(f"{m} {num(row.get(m))}" for m in metrics if m in row)


def eval_headline(summary: dict, metrics: list[str]) -> str:
    """eval's one line: quality, NFE against the baseline's, measured speedup with spread, ideal."""
    return (f"{quality(summary, metrics)}; NFE {num(summary['nfe'], 'g')} of {num(summary['baseline_nfe'], 'g')}; "
            f"speedup {speedup_text(summary)} (ideal {num(summary['ideal_speedup'], '.2f')}x) "
            f"over {summary['samples']} samples")


def rows_headline(rows: list[dict], metrics: list[str], what: str) -> str:
    """A table's one line: each row's method, NFE, quality and measured speedup."""
    parts = [f"{r.get('method')} NFE {num(r.get('nfe'), 'g')}: {quality(r, metrics[:1])}, "
             f"{num(r.get('speedup'), '.2f')}x" for r in rows if r.get("nfe") is not None]
    return f"{what}: " + "; ".join(parts)
