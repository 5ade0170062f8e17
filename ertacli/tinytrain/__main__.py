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
    jobs: int = typer.Option(2, help="models trained at once, one process each (2 cores: 2)"),
    threads: int = typer.Option(1, help="torch threads per process (results are reproducible per thread count)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Train each model; save it in save_pretrained layout with train_log.csv, samples.png and training.json."""
    from rich.console import Console

    from ertacli.tinytrain.run import progress_bar, train_parallel, train_sequential

    names = model or list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    specs = [SPECS[n] if steps is None else dataclasses.replace(SPECS[n], steps=steps) for n in names]
    start = time.perf_counter()
    with progress_bar(quiet) as bar:
        run = train_parallel if jobs > 1 and len(specs) > 1 else train_sequential
        done = run(specs, out, seed, threads, bar)
    console = Console()
    for name, info in done.items():
        console.print(f"[bold]{name}[/]: {info['steps']} steps in {info['train_seconds']:.0f} s, "
                      f"loss {info['final_loss_mean_last_20']:.4f}, digit-acc on {len(info['check_prompts'])} "
                      f"check prompts {info['check_digit_acc']:.2f} -> {out / name}")
    console.print(f"train-tiny done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app()
