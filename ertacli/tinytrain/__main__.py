"""python -m ertacli.tinytrain: train the tiny-flux and tiny-wan digit backbones (CPU, seeded)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import List, Optional

import typer

from ertacli.tinytrain.models import SPECS

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="tiny-flux and/or tiny-wan (default both)"),
    out: Path = typer.Option(Path("models"), help="output root; each model goes to OUT/<name>/"),
    seed: int = typer.Option(0, help="seed for weights, batches, noise and captions"),
    steps: Optional[int] = typer.Option(None, help="override the training steps (quick trials)"),
    threads: int = typer.Option(2, help="torch intra-op threads"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Train each model, save it in save_pretrained layout with train_log.csv, samples.png and training.json."""
    import torch
    from rich.console import Console

    console = Console()
    names = model or list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    torch.set_num_threads(threads)
    from ertacli.tinytrain.train import train_and_save

    total = time.perf_counter()
    for name in names:
        spec = SPECS[name] if steps is None else dataclasses.replace(SPECS[name], steps=steps)
        start = time.perf_counter()
        info = train_and_save(spec, out, seed, quiet)
        console.print(f"[bold]{name}[/]: {spec.steps} steps, training {info['train_seconds']:.0f} s, "
                      f"total {time.perf_counter() - start:.0f} s, loss {info['final_loss_mean_last_20']:.4f}, "
                      f"digit-acc on 10 check prompts {info['check_digit_acc']:.2f} -> {out / name}")
    console.print(f"all done in {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    app()
