"""Error rectification: streamed least squares eps ~ a v~ + b and its linear / sigmoid forms (docs/method.md "fit")."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _reduce_dims(shape: torch.Size, granularity: str, channel_dim: int) -> tuple[int, ...]:
    """Axes summed over for a granularity: all (scalar), all but channels (channel), batch only (element)."""
    nd = len(shape)
    if granularity == "scalar":
        return tuple(range(nd))
    if granularity == "element":
        return (0,)
    cd = channel_dim % nd
    return tuple(d for d in range(nd) if d != cd)


def coeff_shape(sample_shape: torch.Size, granularity: str, channel_dim: int) -> tuple[int, ...]:
    """Shape of a/b for a per-sample output shape (batch dim excluded)."""
    if granularity == "scalar":
        return ()
    if granularity == "element":
        return tuple(sample_shape)
    return (sample_shape[(channel_dim % (len(sample_shape) + 1)) - 1],)


@dataclass
class RectStats:
    """Float64 sufficient statistics of (v~, eps) over a batch: count, sums, squares and cross products."""

    n: torch.Tensor
    sv: torch.Tensor
    svv: torch.Tensor
    se: torch.Tensor
    sve: torch.Tensor

    @classmethod
    def from_batch(cls, v: torch.Tensor, eps: torch.Tensor, granularity: str, channel_dim: int) -> "RectStats":
        """Accumulate one batch of cached velocities v~ and errors eps = v~ - v."""
        dims = _reduce_dims(v.shape, granularity, channel_dim)
        v64, e64 = v.double(), eps.double()
        n = torch.tensor(float(torch.tensor([v.shape[d] for d in dims]).prod()), dtype=torch.float64)
        return cls(n, v64.sum(dims), (v64 * v64).sum(dims), e64.sum(dims), (v64 * e64).sum(dims))

    def __add__(self, other: "RectStats") -> "RectStats":
        return RectStats(self.n + other.n, self.sv + other.sv, self.svv + other.svv,
                         self.se + other.se, self.sve + other.sve)

    def reduced(self) -> "RectStats":
        """The statistics summed over every rank of a distributed run (unchanged in one process)."""
        from ..dist import all_sum

        return RectStats(*(all_sum(t) for t in (self.n, self.sv, self.svv, self.se, self.sve)))

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed form a = S_ve / S_vv, b = mean(eps) - a mean(v~) (centred sums; S_vv = 0 gives a = 0)."""
        mv, me = self.sv / self.n, self.se / self.n
        s_vv = self.svv - self.n * mv * mv
        s_ve = self.sve - self.n * mv * me
        safe = s_vv > 0
        a = torch.where(safe, s_ve / torch.where(safe, s_vv, torch.ones_like(s_vv)), torch.zeros_like(s_vv))
        return a, me - a * mv

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean v~, mean eps)."""
        return self.sv / self.n, self.se / self.n


def sigmoid_coeffs(stats: RectStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 21 through its first-order expansion: K = 4a, B = 4(mean(eps) - 1/2) - K mean(v~)."""
    a, _ = stats.solve()
    mv, me = stats.means()
    K = 4.0 * a
    return K, 4.0 * (me - 0.5) - K * mv


def _broadcast(coef: torch.Tensor, out: torch.Tensor, granularity: str, channel_dim: int) -> torch.Tensor:
    """Shape a coefficient tensor to broadcast against a batch-first output."""
    coef = coef.to(device=out.device)
    if granularity == "scalar":
        return coef
    if granularity == "element":
        return coef.unsqueeze(0)
    shape = [1] * out.ndim
    shape[channel_dim % out.ndim] = coef.numel()
    return coef.reshape(shape)


def rectify(v: torch.Tensor, first: torch.Tensor, second: torch.Tensor, form: str,
            granularity: str, channel_dim: int) -> torch.Tensor:
    """v~' = v~ - (a v~ + b) (linear) or v~ - sigmoid(K v~ + B) (sigmoid), computed in float64, cast back."""
    p = _broadcast(first, v, granularity, channel_dim)
    q = _broadcast(second, v, granularity, channel_dim)
    v64 = v.double()
    corr = p * v64 + q
    if form == "sigmoid":
        corr = torch.sigmoid(corr)
    return (v64 - corr).to(v.dtype)
