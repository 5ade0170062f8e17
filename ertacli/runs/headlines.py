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
    """'2.05x [IQR 1.98-2.11]', with the timing note when the number cannot be ranked."""
    text = f"{num(row.get('speedup'), '.2f')}x"
    if row.get("speedup_q1") is not None and not _nan(row.get("speedup_q1")):
        text += f" [IQR {num(row['speedup_q1'], '.2f')}-{num(row['speedup_q3'], '.2f')}]"
    note = row.get("timing_note")
    return text + (f" ({note})" if isinstance(note, str) and note else "")


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def with_spread(df):
    """A display copy: speedup as 'median [q1-q3]' with a '*' when its note says it cannot be ranked."""
    if "speedup_q1" not in df.columns:
        return df
    out = df.copy()

    def cell(r) -> str:
        if _nan(r.get("speedup")) or r.get("speedup") is None:
            return "-"
        mark = "*" if isinstance(r.get("timing_note"), str) and r.get("timing_note") else ""
        if _nan(r.get("speedup_q1")) or r.get("speedup_q1") is None:
            return f"{r['speedup']:.2f}{mark}"
        return f"{r['speedup']:.2f} [{r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}]{mark}"

    out["speedup"] = [cell(r) for r in df.to_dict("records")]
    return out.drop(columns=["speedup_q1", "speedup_q3"])


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
