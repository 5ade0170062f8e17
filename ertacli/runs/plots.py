"""Pictures of a sweep: quality against measured speedup (Pareto), and the residual error profile per branch."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points not beaten in both speedup (higher) and quality; sorted by speedup."""
    sign = 1 if higher_is_better else -1
    front = [p for p in points
             if not any(q[0] >= p[0] and sign * q[1] >= sign * p[1] and q != p for q in points)]
    return sorted(front)


def _panel(ax, df: pd.DataFrame, metric: str, higher_is_better: bool) -> None:
    """One quality metric against measured speedup, one series per method, the frontier dashed."""
    y = _numeric(df[metric]) if metric in df else pd.Series(dtype=float)
    if y.isna().all():
        reason = str(df[metric].dropna().iloc[0]) if metric in df and df[metric].notna().any() else "not measured"
        ax.text(0.5, 0.5, textwrap.fill(f"{metric}: {reason}", 60), ha="center", va="center", fontsize=7,
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    data = df.assign(_y=y, _x=_numeric(df["speedup"])).dropna(subset=["_x", "_y"])
    for method, g in data.groupby("method", sort=False):
        ours = str(method).startswith("ertacache")
        ax.plot(g["_x"], g["_y"], "o-" if ours else "s", label=method, markersize=6)
        for _, r in g.iterrows() if ours else ():
            matched = pd.notna(r.get("target_nfe")) or pd.isna(r.get("lambda"))
            label = f"NFE {r['nfe']:g}" if matched else f"λ={r['lambda']:.3g}"
            ax.annotate(label, (r["_x"], r["_y"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(list(zip(data["_x"], data["_y"])), higher_is_better)
    if len(front) > 1:
        ax.plot(*zip(*front), "k--", linewidth=0.8, label="Pareto frontier")
    ax.set_xlabel("measured speedup vs uncached (x)")
    ax.set_ylabel(metric + (" (higher is better)" if higher_is_better else " (lower is better)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_pareto(df: pd.DataFrame, path: Path, title: str) -> Path:
    """PSNR, SSIM and LPIPS against measured speedup for each of our methods and each peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _panel(axes[0], df, "psnr", True)
    _panel(axes[1], df, "ssim", True)
    _panel(axes[2], df, "lpips", False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_error_profile(profile: dict, plans: list, path: Path, title: str) -> Path:
    """Per branch: ||R_k - R_{k-1}|| / ||R_k|| of the uncached run per step, each plan's cached steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    branches = list(profile["branches"])
    fig, axes = plt.subplots(len(branches), 1, figsize=(9, 3.2 * len(branches)), squeeze=False)
    for ax, b in zip(axes[:, 0], branches):
        err = profile["stats"][b]["dR_rel"]
        steps = list(range(1, len(err)))
        ax.plot(steps, err[1:], "k.-", label="residual change vs previous step (uncached)")
        top = max(err[1:]) if len(err) > 1 else 1.0
        for i, plan in enumerate(plans):
            cached = plan.cached_steps.get(b, [])
            ax.plot(cached, [top * (1.08 + 0.07 * i)] * len(cached), "v", markersize=5,
                    label=f"cached {plan_label(plan)} ({len(cached)} steps)")
        ax.set_title(f"branch {b}", fontsize=9)
        ax.set_xlabel("sampling step k (0 = pure noise)")
        ax.set_ylabel("||R_k - R_{k-1}|| / ||R_k||")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plan_label(plan) -> str:
    """How the error-profile legend names a plan: its lambda, or what auto chose."""
    if plan.lam is not None:
        return f"at λ={plan.lam:g}"
    return f"by auto: {plan.auto['winner']['label']}" if getattr(plan, "auto", None) else f"({plan.method})"
