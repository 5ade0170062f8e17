"""Extrapolating predictors for cached steps (docs/method.md "Beyond the paper").

On a cached step k, `R^_k = R1 + c_k * P_k` with P_k Newton's form over the last computed (s_j, R_j).
`c_k = 0` (or kind "reuse") is the paper's reuse of R1, returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

HIST = "hist"  # key in BranchState.extra: [(s1, R1), (s2, R2), (s3, R3)], latest computed first
from ..choices import ABSCISSAE, KINDS, ORDERS  # noqa: E402 (the one table of allowed values)


def newton_term(hist: list, s_k: float, order: int) -> torch.Tensor | None:
    """docs/method.md: P_k = (s_k - s1)[R1,R2] (+ (s_k - s1)(s_k - s2)[R1,R2,R3] for order 2); None when reuse."""
    n = min(order, len(hist) - 1)
    if n <= 0:
        return None
    (s1, R1), (s2, R2) = hist[0], hist[1]
    d12 = (R1 - R2) / (s1 - s2)
    P = (s_k - s1) * d12
    if n >= 2:
        s3, R3 = hist[2]
        d123 = (d12 - (R2 - R3) / (s2 - s3)) / (s1 - s3)
        P = P + ((s_k - s1) * (s_k - s2)) * d123
    return P


def fitted_gain(P: torch.Tensor, target: torch.Tensor, reduce=lambda x: x) -> float:
    """docs/method.md: c_k = <P_k, R_k - R1> / <P_k, P_k> in float64, both sums reduced over the batch (all ranks)."""
    num = reduce(float((P.double() * target.double()).sum()))
    den = reduce(float((P.double() ** 2).sum()))
    return num / den if den > 0 else 0.0


@dataclass
class Predictor:
    """Which predictor a cached step uses: kind, order, abscissa (sigma or step index) and gain c."""

    kind: str = "reuse"
    order: int = 1
    abscissa: str = "sigma"
    c: float | dict = 1.0
    base_sigmas: list[float] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in KINDS or self.order not in ORDERS or self.abscissa not in ABSCISSAE:
            raise ValueError(f"predictor: kind {KINDS}, order 1|2, abscissa {ABSCISSAE}; got {self.to_json()}")
        if self.kind == "extrapolate" and self.abscissa == "sigma" and not self.base_sigmas:  # DDIM, DPM: step index
            self.abscissa = "index"

    @classmethod
    def from_plan(cls, data: dict | None, base_sigmas: list[float]) -> "Predictor":
        """The predictor recorded in a plan (`{"kind", "order", "abscissa", "c"}`)."""
        data = data or {}
        kind = data.get("kind", "reuse")
        c = data.get("c", 1.0 if kind == "extrapolate" else 0.0)
        return cls(kind, int(data.get("order", 1)), data.get("abscissa", "sigma"), c, list(base_sigmas))

    def to_json(self) -> dict:
        """The plan's `predictor` entry."""
        return {"kind": self.kind, "order": self.order, "abscissa": self.abscissa, "c": self.c}

    @property
    def active(self) -> bool:
        return self.kind == "extrapolate"

    def at(self, k: int, schedule=None) -> float:
        """The abscissa of step k: its index, or the sigma the model is queried at (live schedule, else base)."""
        if self.abscissa == "index" or not self.active:
            return float(k)
        return float(schedule.sigmas[k]) if schedule is not None else float(self.base_sigmas[k])

    def push(self, state, s: float, R: torch.Tensor) -> None:
        """Record a computed step's (s_j, R_j), keeping the last 3."""
        if self.active:
            hist = state.extra.setdefault(HIST, [])
            hist.insert(0, (s, R))
            del hist[3:]

    def term(self, state, s_k: float) -> torch.Tensor | None:
        """P_k for the branch's history, or None (reuse)."""
        if not self.active:
            return None
        return newton_term(state.extra.get(HIST, []), s_k, self.order)

    def gain(self, branch: str, k: int) -> float:
        """c_k: the scalar gain, or the fitted per-branch, per-step one (1 where none was fitted)."""
        if isinstance(self.c, dict):
            return float(self.c.get(branch, {}).get(str(k), 1.0))
        return float(self.c)

    def predict(self, state, branch: str, k: int, s_k: float) -> torch.Tensor:
        """docs/method.md: R^_k = R1 + c_k * P_k; exactly R1 when c_k = 0 or no history."""
        R1 = state.cached
        P = self.term(state, s_k)
        c = self.gain(branch, k)
        if P is None or c == 0.0:
            return R1
        return R1 + c * P


def predictor_spec(cache_cfg) -> dict:
    """The plan's `predictor` entry for a recipe's `cache:` section (gain 1 when extrapolating, 0 for reuse)."""
    return {"kind": cache_cfg.predictor, "order": int(cache_cfg.order), "abscissa": cache_cfg.abscissa,
            "c": 1.0 if cache_cfg.predictor == "extrapolate" else 0.0}
