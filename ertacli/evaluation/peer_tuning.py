"""Peer tuning: each peer's whole grid on probe samples, the best-PSNR setting at a target NFE."""

from __future__ import annotations

import weakref

GRIDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Per pipeline: each peer's scored grid on a probe set, so several NFE targets pick from one tuning run."""


def probe_refs(sampler, probe, residual: str) -> list:
    """Uncached outputs of the probe samples: what a peer's settings are scored against while tuning."""
    from .runners import baseline_runner

    with baseline_runner(sampler, residual) as m:
        return [m.run(p, s)[0].media[0] for p, s in zip(probe.prompts, probe.seeds)]


def pick(tried: list[dict], target_nfe: float) -> dict | None:
    """Best PSNR among settings matching the NFE (target - 1 <= NFE <= target); else the nearest NFE below the target;
    None when no setting reaches NFE <= target (the row then says so rather than showing a run with more NFE)."""
    matched = [t for t in tried if target_nfe - 1 <= t["nfe"] <= target_nfe]
    if matched:
        return max(matched, key=lambda t: t["psnr"])
    below = [t for t in tried if t["nfe"] <= target_nfe]
    return min(below, key=lambda t: (abs(t["nfe"] - target_nfe), t["nfe"])) if below else None


def unreached(tried: list[dict], target_nfe: float) -> str:
    """The row note of a peer none of whose settings reaches the target NFE."""
    fewest = min(t["nfe"] for t in tried)
    return f"no setting reaches NFE <= {target_nfe:g} (fewest in its grid of {len(tried)}: NFE {fewest:g})"


def tune_peer(sampler, name: str, target_nfe: int, probe, refs: list, extra: dict | None = None) -> dict:
    """The peer's whole grid on the probe samples; the best-PSNR setting at the target NFE (`pick`), or, when no
    setting reaches it, `setting` None and `unreached` saying so.

    `extra`: what the caller supplies the peer's builds (TeaCache: its fitted coefficients); a peer with its own
    calibration (MagCache, SmoothCache) adds what it measures on the first probe sample."""
    from .peers import PEERS
    from .runners import PeerRunner
    from .scoring import mean_psnr

    peer = PEERS[name]
    key = (name, probe.digest(), repr(sorted((extra or {}).items())), sampler.steps,
           repr(sorted((k, v) for k, v in sampler.call_kwargs.items() if isinstance(v, (int, float, str)))))
    memo = GRIDS.setdefault(sampler.pipe, {})
    if key not in memo:
        extra = dict(extra or {})
        if peer.calibrate is not None:
            extra.update(peer.calibrate(sampler, probe))
        tried = []
        for setting in peer.grid:
            with PeerRunner(sampler, name, setting, extra) as m:
                outs = [m.run(p, s) for p, s in zip(probe.prompts, probe.seeds)]
            tried.append({"setting": setting, "nfe": sum(o[1] for o in outs) / len(outs),
                          "psnr": mean_psnr([o[0].media[0] for o in outs], refs)})
        memo[key] = (extra, tried)
    extra, tried = memo[key]
    chosen = pick(tried, target_nfe)
    n_matched = sum(target_nfe - 1 <= t["nfe"] <= target_nfe for t in tried)
    if chosen is None:
        return {"setting": None, "unreached": unreached(tried, target_nfe), "extra": extra, "tried": len(tried),
                "matched": 0}
    return {"setting": chosen["setting"], "probe_nfe": chosen["nfe"], "probe_psnr": chosen["psnr"], "extra": extra,
            "tried": len(tried), "matched": n_matched}
