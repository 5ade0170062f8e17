"""Flow-matching training of one tiny backbone on CPU: seeded, Rich progress, loss CSV, save_pretrained layout."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from ertacli.tinytrain.data import MOTIONS, caption_bank, digits, render_images, render_videos
from ertacli.tinytrain.models import Spec, build_pipeline, build_transformer, forward_for

DROPOUT = 0.1  # share of captions replaced by "" (the unconditional branch for classifier-free guidance)
WARMUP = 20  # linear learning-rate warm-up steps, then cosine decay to 5%
LOG_FILE = "train_log.csv"
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

        self.texts, keys = caption_bank(spec.video, spec.captions_per_group, seed)
        self.tokens, self.pooled = minilm_embed([""] + self.texts)
        n_motions = len(MOTIONS) if spec.video else 1
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
    motions = torch.randint(len(MOTIONS), (spec.batch,), generator=gen) if spec.video else torch.zeros_like(idx)
    if spec.video:
        x = render_videos(imgs[idx], [MOTIONS[int(m)] for m in motions], spec.frames, spec.size)
    else:
        x = render_images(imgs[idx], spec.size)
    tokens, pooled = caps.pick(labels[idx], motions, gen)
    return x, tokens, pooled


def flow_loss(fw: Any, x0: Any, tokens: Any, pooled: Any, gen: Any) -> Any:
    """Rectified flow: x_s = (1 - s) x0 + s noise, target v = noise - x0, s ~ U(0, 1) (FlowMatchEuler's convention)."""
    import torch

    x0 = fw.target_layout(x0)
    s = torch.rand(x0.shape[0], generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sv = s.view(-1, *[1] * (x0.dim() - 1))
    pred = fw((1 - sv) * x0 + sv * noise, s, tokens, pooled)
    return torch.nn.functional.mse_loss(pred.float(), noise - x0)


def _progress(quiet: bool) -> Any:
    """A Rich progress bar with loss and ETA (disabled when quiet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=quiet)


def _ema_update(ema: Any, model: Any, step: int, decay: float) -> None:
    """ema <- d * ema + (1 - d) * model, with d ramping up to decay over the first steps."""
    import torch

    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def fit(spec: Spec, seed: int, log_path: Path, quiet: bool = False) -> tuple[Any, Any, list[dict]]:
    """Train spec's transformer from scratch; returns (EMA transformer, trained transformer, loss rows)."""
    import copy

    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    caps = Captions(spec, seed)
    model = build_transformer(spec).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    fw = forward_for(spec, model)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, spec.steps))
    rows, start = [], time.perf_counter()
    with _progress(quiet) as bar, open(log_path, "w", newline="") as fh:
        log = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"])
        log.writeheader()
        task = bar.add_task(spec.name, total=spec.steps, loss=float("nan"))
        for step in range(spec.steps):
            loss = flow_loss(fw, *batch(spec, caps, gen), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            _ema_update(ema, model, step, spec.ema)
            value = float(loss.detach())
            row = {"step": step + 1, "loss": round(value, 6), "lr": opt.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - start, 2)}
            log.writerow(row)
            fh.flush()
            rows.append(row)
            bar.update(task, advance=1, loss=value)
    return ema, model.eval(), rows


def sample_check(pipe: Any, spec: Spec, prompts: list[str], seed: int, guidance: float) -> tuple[Any, float]:
    """Sample one clip/image per prompt (20 Euler steps); returns (media in [0, 1], digit accuracy)."""
    import torch

    from ertacli.backbones.minilm import MiniLMTextEncoder
    from ertacli.tinytrain.classifier import batch_accuracy

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
    from ertacli.media import save_grid

    if not video:
        save_grid(list(media), path, nrow=10)
        return
    f = media.shape[1]
    save_grid([clip[k] for clip in media for k in (0, f // 2, f - 1)], path, nrow=3)


def train_and_save(spec: Spec, out_root: Path, seed: int, quiet: bool = False) -> dict:
    """Train, save the pipeline (save_pretrained, safetensors), the loss CSV, a sample grid and training.json."""
    from ertacli.tinytrain.data import DIGIT_WORDS

    out = Path(out_root) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ema, _, rows = fit(spec, seed, out / LOG_FILE, quiet)
    train_s = time.perf_counter() - start
    pipe = build_pipeline(spec, ema)
    pipe.save_pretrained(out, safe_serialization=True)
    tail = " drifting left" if spec.video else ""
    prompts = [f"a handwritten {w}{tail}" for w in DIGIT_WORDS]
    media, acc = sample_check(pipe, spec, prompts, seed, 5.0 if spec.video else 3.5)
    save_samples(media, out / "samples.png", spec.video)
    info = {"name": spec.name, "seed": seed, "steps": spec.steps, "batch": spec.batch, "lr": spec.lr,
            "size": spec.size, "frames": spec.frames, "dropout": DROPOUT, "ema": spec.ema,
            "text_encoder": "minilm", "train_seconds": round(train_s, 1),
            "final_loss_mean_last_20": round(sum(r["loss"] for r in rows[-20:]) / min(20, len(rows)), 5),
            "check_prompts": prompts, "check_digit_acc": round(acc, 4)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
