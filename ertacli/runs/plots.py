"""Pictures of a sweep: quality against measured speedup (Pareto), and the search error each plan thresholded."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .guard import target

PEER_MARKERS = "sDP^X*hv<>p"


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points not beaten in both speedup (higher) and quality; sorted by speedup."""
    sign = 1 if higher_is_better else -1
    front = [p for p in points
             if not any(q[0] >= p[0] and sign * q[1] >= sign * p[1] and q != p for q in points)]
    return sorted(front)


def measured_metrics(df: pd.DataFrame, metrics: list[str]) -> tuple[list[str], list[str]]:
    """(metrics with at least one number, metrics with none)."""
    have = [m for m in metrics if m in df and _numeric(df[m]).notna().any()]
    return have, [m for m in metrics if m not in have]


def _ours(method: str) -> bool:
    return str(method).startswith(("ertacache", "auto"))


def _panel(ax, data: pd.DataFrame, metric: str, higher_is_better: bool) -> list:
    """One quality metric against measured speedup (IQR as error bars), every point labelled by its NFE."""
    handles, peer = [], 0
    for method, g in data.groupby("method", sort=False):
        ours = _ours(method)
        style = dict(marker="o", linestyle="-") if ours else dict(marker=PEER_MARKERS[peer % len(PEER_MARKERS)],
                                                                  linestyle="none")
        peer += 0 if ours else 1
        g = g.sort_values("_x")
        xerr = [(g["_x"] - g["_q1"]).clip(lower=0), (g["_q3"] - g["_x"]).clip(lower=0)]
        h = ax.errorbar(g["_x"], g["_y"], xerr=xerr, markersize=6, capsize=2, label=str(method), **style)
        handles.append(h)
        for _, r in g.iterrows():
            ax.annotate(f"NFE {r['nfe']:g}", (r["_x"], r["_y"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=6.5)
    front = pareto_front(list(zip(data["_x"], data["_y"])), higher_is_better)
    if len(front) > 1:
        handles += ax.plot(*zip(*front), "k--", linewidth=0.8, label="Pareto frontier")
    ax.set_xlabel("measured speedup vs uncached (x; bars: IQR over timing rounds)")
    ax.set_ylabel(metric.upper() + (" (higher is better)" if higher_is_better else " (lower is better)"))
    ax.grid(alpha=0.3)
    return handles


def plot_pareto(df: pd.DataFrame, path: Path, title: str, metrics: tuple[str, ...] = ("psnr", "ssim", "lpips")) -> Path:
    """Each measured metric against measured speedup for our methods and each peer; missing ones in one note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have, missing = measured_metrics(df, list(metrics))
    x = _numeric(df.get("speedup", pd.Series(dtype=float)))
    data = df.assign(_x=x, _q1=_numeric(df.get("speedup_q1", x)).fillna(x), _q3=_numeric(df.get("speedup_q3", x)).fillna(x))
    fig, axes = plt.subplots(1, max(1, len(have)), figsize=(6.2 * max(1, len(have)), 5.2), squeeze=False)
    handles = []
    for ax, metric in zip(axes[0], have):
        sub = data.assign(_y=_numeric(data[metric])).dropna(subset=["_x", "_y"])
        handles = _panel(ax, sub, metric, metric != "lpips") or handles
    note = f"not measured here: {', '.join(missing)} (the reason is in sweep.md)" if missing else ""
    fig.legend(handles=handles, loc="lower center", ncol=min(5, max(1, len(handles))), fontsize=8, frameon=False)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(target(path), dpi=110)
    plt.close(fig)
    return path


def plot_error_profile(plans: list, path: Path, title: str) -> Path:
    """Per branch: each plan's search error e_k per step, its lambda line, and its cached steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    branches = list(dict.fromkeys(b for p in plans for b in p.branches)) or ["(no plan)"]
    fig, axes = plt.subplots(len(branches), 1, figsize=(10, 4.6 * len(branches)), squeeze=False)
    for ax, b in zip(axes[:, 0], branches):
        for i, plan in enumerate(plans):
            errs = {int(k): v for k, v in plan.search_errors.get(b, {}).items()}
            color = f"C{i % 10}"
            label = f"{plan.predictor.get('kind', 'reuse')}-{plan.predictor.get('order', 1)} {plan_label(plan)}, NFE {plan.nfe}"
            if not errs:  # a schedule that was not thresholded (auto's uniform families): its cached steps only
                cached = plan.cached_steps.get(b, [])
                ax.plot(cached, [0.04 + 0.05 * (i % 6)] * len(cached), "v", color=color, markersize=7,
                        label=label + " (cached steps; no threshold)", transform=ax.get_xaxis_transform())
                continue
            steps = sorted(errs)
            ax.plot(steps, [errs[k] for k in steps], ".-", color=color, linewidth=1, label=label)
            if plan.lam is not None:
                ax.axhline(plan.lam, color=color, linestyle="--", linewidth=0.8)
                ax.annotate(f"λ={plan.lam:.2g}", (steps[0], plan.lam), textcoords="offset points",
                            xytext=(-2, 3 + 9 * (i % 3)), fontsize=7, color=color, ha="right")
            cached = [k for k in plan.cached_steps.get(b, []) if k in errs]
            ax.plot(cached, [errs[k] for k in cached], "v", color=color, markersize=7, markerfacecolor="none")
        ax.set_title(f"branch {b}: ▽ = cached (e_k < λ); dashed = λ", fontsize=9)
        ax.set_xlabel("sampling step k (0 = pure noise)")
        ax.set_ylabel(r"$e_k = \|\hat R_k - R_k\|_1 \,/\, \|R_k\|_1$")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(target(path), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plan_label(plan) -> str:
    """How the error-profile legend names a plan: its lambda, or what auto chose."""
    if plan.lam is not None:
        return f"at λ={plan.lam:g}"
    return f"by auto: {plan.auto['winner']['label']}" if getattr(plan, "auto", None) else f"({plan.method})"
