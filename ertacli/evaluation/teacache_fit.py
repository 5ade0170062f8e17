"""TeaCache's rescaling polynomial, fitted here: "how do I get the coefficients for my model".

An uncached pass over the calibration samples (TeaCache attached at threshold 0, which computes every call) records,
per stream and step, the relative L1 change x of the first block's modulated input and y of the model output;
numpy.polyfit(x, y, 4) by least squares, as in the paper. Deterministic: same samples, same numbers, same fit.
"""

from __future__ import annotations

DEGREE = 4


def record_teacache(sampler, samples) -> list[tuple]:
    """(branch, step, x_rel, y_rel) of every call after each stream's first, over all samples, in call order."""
    from .peers import enabled
    from .teacache import TeaCacheConfig

    records: list[tuple] = []
    cfg = TeaCacheConfig(threshold=0.0, num_inference_steps=sampler.steps, block_lists=sampler.backbone.block_lists,
                         record=records)
    with enabled(sampler.pipe, cfg):
        for p, s in zip(samples.prompts, samples.seeds):
            sampler.run([p], [s])
    return records


def fit_polynomial(x: list[float], y: list[float], degree: int = DEGREE) -> dict:
    """Least-squares polynomial y ~ poly(x): coefficients (highest power first), R^2 and RMS residual."""
    import numpy as np

    from ..errors import UserError

    if len(x) <= degree:
        raise UserError(f"TeaCache fit needs more than {degree} (x, y) points, got {len(x)}; use more steps or samples")
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    coef = np.polyfit(xa, ya, degree)
    pred = np.polyval(coef, xa)
    ss_res, ss_tot = float(((ya - pred) ** 2).sum()), float(((ya - ya.mean()) ** 2).sum())
    return {"coefficients": [float(c) for c in coef], "degree": degree,
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "rms_residual": float(np.sqrt(ss_res / len(xa))),
            "points": len(xa), "x_range": [float(xa.min()), float(xa.max())]}


def fit_teacache(sampler, samples, degree: int = DEGREE) -> tuple[dict, list[tuple]]:
    """(fit, records) from an uncached pass over `samples`."""
    records = record_teacache(sampler, samples)
    return fit_polynomial([r[2] for r in records], [r[3] for r in records], degree), records
