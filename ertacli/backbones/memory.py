"""A rough peak-memory estimate of a calibration pass, printed before `profile` starts (so an OOM is seen coming).

peak ~ weights on the device + one micro-batch's block activations + the cache state every branch keeps for the
whole batch (the cached residual, the last residual, the block input and up to three extrapolation points).
"""

from __future__ import annotations

import math
from typing import Any

ACTIVATION_FACTOR = 12  # hidden-state-sized tensors alive inside one block's forward (attention, MLP, norms)
STATE_TENSORS = 6  # per branch and sample: cached R, R_k, h_in, three predictor history points


def _pair(v: Any) -> tuple[int, int, int]:
    """(t, h, w) patch of a transformer config's patch_size (int, or a (t, h, w) tuple)."""
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1]), int(v[2])) if len(v) == 3 else (1, int(v[0]), int(v[1]))
    return 1, int(v or 1), int(v or 1)


def tokens_per_sample(pipe: Any, backbone: Any, call_kwargs: dict) -> int:
    """Transformer tokens of one sample: latent frames x latent rows x latent columns, over the patch."""
    cfg = pipe.transformer.config
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", 8) or 8
    temporal = getattr(pipe, "vae_scale_factor_temporal", 1) or 1
    pt, ph, pw = _pair(getattr(cfg, "patch_size", 1))
    pt = int(getattr(cfg, "patch_size_t", None) or pt)
    if backbone.latent_layout == "packed" and backbone.pipeline == "FluxPipeline":
        ph, pw = 2, 2  # FluxPipeline packs 2x2 latent pixels into a token
    frames = int(call_kwargs.get("num_frames") or 1)
    lat_f = (frames - 1) // temporal + 1 if backbone.is_video else 1
    rows = math.ceil(int(call_kwargs["height"]) / spatial / ph)
    cols = math.ceil(int(call_kwargs["width"]) / spatial / pw)
    return max(1, math.ceil(lat_f / pt)) * rows * cols


def estimate_peak(pipe: Any, backbone: Any, call_kwargs: dict, n_samples: int, micro_batch: int,
                  device_bytes: int) -> dict:
    """Estimated peak bytes of a calibration pass over `n_samples` (its parts too): weights, activations, state."""
    cfg = pipe.transformer.config
    width = int(getattr(cfg, "num_attention_heads", 1) * getattr(cfg, "attention_head_dim", 64))
    tokens = tokens_per_sample(pipe, backbone, call_kwargs)
    hidden = tokens * width * device_bytes
    weights = sum(p.numel() * p.element_size() for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
                  for p in (getattr(getattr(pipe, name, None), "parameters", lambda: [])()))
    chunk = min(micro_batch or n_samples, n_samples)
    activations = ACTIVATION_FACTOR * chunk * hidden
    state = STATE_TENSORS * len(backbone.branches) * n_samples * hidden
    return {"tokens": tokens, "width": width, "weights": weights, "activations": activations, "state": state,
            "peak": weights + activations + state, "micro_batch": chunk, "samples": n_samples}


def describe(est: dict) -> str:
    """One line for the console."""
    gib = lambda b: f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
    return (f"profile: estimated peak memory {gib(est['peak'])} = weights {gib(est['weights'])} + activations of "
            f"{est['micro_batch']} samples at a time {gib(est['activations'])} + cache state of {est['samples']} "
            f"samples {gib(est['state'])} ({est['tokens']} tokens x width {est['width']}); lower it with "
            f"calibration.micro_batch or fewer calibration prompts")
