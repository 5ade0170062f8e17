"""Flow-matching training of one tiny backbone on CPU: seeded, Rich progress, loss CSV, save_pretrained layout."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from ertacli.evaluation.digit_data import digits, render_images, render_videos
from ertacli.tinytrain.data import caption_bank
from ertacli.tinytrain.models import Spec, build_pipeline, build_transformer, forward_for

DROPOUT = 0.1  # share of captions replaced by "" (the unconditional branch for classifier-free guidance)
WARMUP = 20  # linear learning-rate warm-up steps, then cosine decay to 5%
LOG_FILE = "train_log.csv"
CHECKPOINT = "checkpoint.pt"  # written every CHECKPOINT_EVERY steps, removed when training ends
CHECKPOINT_EVERY = 50
INFO_FILE = "training.json"


def lr_factor(step: int, total: int) -> float:
    """Warm-up then cosine decay to 5% of the base rate."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, total - WARMUP)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))


class Captions:
    """MiniLM embeddings of a caption bank, indexed by (digit, motion); row 0 is the empty caption."""

    def __init__(self, spec: Spec, seed: int) -> None:
        import torch

        from ertacli.backbones.minilm import minilm_embed

        self.texts, keys = caption_bank(spec.video, spec.motions, spec.captions_per_group, seed)
        self.tokens, self.pooled = minilm_embed([""] + self.texts)
        n_motions = len(spec.motions) if spec.video else 1
        self.table = torch.arange(1, len(keys) + 1).view(10, n_motions, spec.captions_per_group)

    def pick(self, labels: Any, motions: Any, gen: Any) -> tuple[Any, Any]:
        """Token states and pooled vectors of one random caption per sample, DROPOUT of them emptied."""
        import torch

        col = torch.randint(self.table.shape[2], (len(labels),), generator=gen)
        idx = self.table[labels, motions, col]
        idx = torch.where(torch.rand(len(labels), generator=gen) < DROPOUT, torch.zeros_like(idx), idx)
        return self.tokens[idx], self.pooled[idx]


def batch(spec: Spec, caps: Captions, gen: Any) -> tuple[Any, Any, Any]:
    """(clean latents in [-1, 1], token states, pooled) for one random batch."""
    import torch

    imgs, labels = digits()
    idx = torch.randint(len(imgs), (spec.batch,), generator=gen)
    motions = torch.randint(len(spec.motions), (spec.batch,), generator=gen) if spec.video else torch.zeros_like(idx)
    if spec.video:
        x = render_videos(imgs[idx], [spec.motions[int(m)] for m in motions], spec.frames, spec.size)
    else:
        x = render_images(imgs[idx], spec.size)
    tokens, pooled = caps.pick(labels[idx], motions, gen)
    return x, tokens, pooled


def noise_levels(n: int, kind: str, gen: Any) -> Any:
    """Training noise levels s in (0, 1): uniform, or logit-normal (sigmoid of a standard normal, SD3's choice)."""
    import torch

    return torch.rand(n, generator=gen) if kind == "uniform" else torch.sigmoid(torch.randn(n, generator=gen))


def flow_loss(fw: Any, x0: Any, tokens: Any, pooled: Any, gen: Any, levels: str = "uniform") -> Any:
    """Rectified flow: x_s = (1 - s) x0 + s noise, target v = noise - x0 (FlowMatchEuler's convention)."""
    import torch

    x0 = fw.target_layout(x0)
    s = noise_levels(x0.shape[0], levels, gen)
    noise = torch.randn(x0.shape, generator=gen)
    sv = s.view(-1, *[1] * (x0.dim() - 1))
    pred = fw((1 - sv) * x0 + sv * noise, s, tokens, pooled)
    return torch.nn.functional.mse_loss(pred.float(), noise - x0)


def _ema_update(ema: Any, model: Any, step: int, decay: float) -> None:
    """ema <- d * ema + (1 - d) * model, with d ramping up to decay over the first steps."""
    import torch

    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


class Trainer:
    """Model, EMA copy, optimiser, schedule and random state of one run, checkpointable so a killed run resumes."""

    def __init__(self, spec: Spec, seed: int) -> None:
        import copy

        import torch

        torch.manual_seed(seed)
        self.spec, self.seed, self.step, self.seconds, self.rows = spec, seed, 0, 0.0, []
        self.gen = torch.Generator().manual_seed(seed)
        self.caps = Captions(spec, seed)
        self.model = build_transformer(spec).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.fw = forward_for(spec, self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=spec.lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: lr_factor(k, spec.steps))

    def state(self) -> dict:
        """Everything needed to continue bit-for-bit."""
        import dataclasses

        return {"spec": dataclasses.asdict(self.spec), "seed": self.seed, "step": self.step, "rows": self.rows,
                "seconds": self.seconds, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "gen": self.gen.get_state()}

    def load(self, path: Path) -> bool:
        """Resume from a checkpoint of the same spec and seed; False when there is none that matches."""
        import dataclasses

        import torch

        if not path.is_file():
            return False
        st = torch.load(path, weights_only=False)
        if st["spec"] != dataclasses.asdict(self.spec) or st["seed"] != self.seed:
            return False
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.gen.set_state(st["gen"])
        self.step, self.rows, self.seconds = st["step"], st["rows"], st["seconds"]
        return True

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss."""
        import torch

        loss = flow_loss(self.fw, *batch(self.spec, self.caps, self.gen), self.gen, self.spec.levels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        _ema_update(self.ema, self.model, self.step, self.spec.ema)
        self.step += 1
        return float(loss.detach())


def fit(spec: Spec, seed: int, out: Path, on_step: Any = None) -> tuple[Any, Any, list[dict]]:
    """Train (resuming from out/CHECKPOINT if present), logging to out/LOG_FILE; returns (EMA, trained, rows)."""
    import torch

    tr, ckpt = Trainer(spec, seed), out / CHECKPOINT
    tr.load(ckpt)
    with open(out / LOG_FILE, "w", newline="") as fh:
        log = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"])
        log.writeheader()
        log.writerows(tr.rows)
        start = time.perf_counter() - tr.seconds
        while tr.step < spec.steps:
            value = tr.train_step()
            tr.seconds = time.perf_counter() - start
            row = {"step": tr.step, "loss": round(value, 6), "lr": tr.opt.param_groups[0]["lr"],
                   "seconds": round(tr.seconds, 2)}
            log.writerow(row)
            fh.flush()
            tr.rows.append(row)
            if tr.step % CHECKPOINT_EVERY == 0 and tr.step < spec.steps:
                torch.save(tr.state(), ckpt)
            if on_step is not None:
                on_step(tr.step, value)
    ckpt.unlink(missing_ok=True)
    return tr.ema, tr.model.eval(), tr.rows


def sample_check(pipe: Any, spec: Spec, prompts: list[str], seed: int, guidance: float) -> tuple[Any, float]:
    """Sample one clip/image per prompt (20 Euler steps); returns (media in [0, 1], digit accuracy)."""
    import torch

    from ertacli.backbones.minilm import MiniLMTextEncoder
    from ertacli.evaluation.digit_classifier import batch_accuracy

    enc = MiniLMTextEncoder("wan" if spec.video else "flux")
    kwargs = dict(num_inference_steps=20, height=spec.size, width=spec.size, guidance_scale=guidance,
                  output_type="pt", return_dict=False, **enc.pipeline_kwargs(prompts, ""))
    if spec.video:
        kwargs["num_frames"] = spec.frames - 1  # WanPipeline rounds up to 1 mod the VAE's temporal factor (1)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        media = pipe(generator=gens, **kwargs)[0].float()
    return media, batch_accuracy(list(media), prompts)


def save_samples(media: Any, path: Path, video: bool) -> None:
    """A grid PNG: one image per prompt, or first / middle / last frame of each clip (one clip per row)."""
    from ertacli.runs.media import save_grid

    if not video:
        save_grid(list(media), path, nrow=10)
        return
    f = media.shape[1]
    save_grid([clip[k] for clip in media for k in (0, f // 2, f - 1)], path, nrow=3)


def _save_quietly(pipe: Any, out: Path) -> None:
    """save_pretrained (safetensors) without diffusers' notes about the absent text encoder and tokenizer."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        pipe.save_pretrained(out, safe_serialization=True)
    finally:
        dlogging.set_verbosity(level)


def train_and_save(spec: Spec, out_root: Path, seed: int, on_step: Any = None) -> dict:
    """Train, save the pipeline (save_pretrained, safetensors), the loss CSV, a sample grid and training.json."""
    from ertacli.evaluation.digit_data import DIGIT_WORDS

    out = Path(out_root) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    ema, _, rows = fit(spec, seed, out, on_step)
    train_s = rows[-1]["seconds"]
    pipe = build_pipeline(spec, ema)
    _save_quietly(pipe, out)
    tail = " drifting left" if spec.video else ""
    prompts = [f"a handwritten {w}{tail}" for w in DIGIT_WORDS]
    media, acc = sample_check(pipe, spec, prompts, seed, spec.guidance)
    save_samples(media, out / "samples.png", spec.video)
    info = {"name": spec.name, "seed": seed, "steps": spec.steps, "batch": spec.batch, "lr": spec.lr,
            "size": spec.size, "frames": spec.frames, "dropout": DROPOUT, "ema": spec.ema, "guidance": spec.guidance,
            "levels": spec.levels,
            "text_encoder": "minilm", "train_seconds": round(train_s, 1),
            "final_loss_mean_last_20": round(sum(r["loss"] for r in rows[-20:]) / min(20, len(rows)), 5),
            "check_prompts": prompts, "check_digit_acc": round(acc, 4)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
