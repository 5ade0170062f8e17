"""Training several tiny backbones at once (one spawned process each) or in turn, under one Rich progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ertacli.tinytrain.models import Spec


def progress_bar(quiet: bool) -> Any:
    """A Rich progress bar with the running loss and an ETA per model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=quiet)


def _worker(spec: Spec, out: Path, seed: int, threads: int, queue: Any) -> None:
    """Child process: train one model with its own thread count, reporting (name, step, loss) on the queue."""
    import torch

    from ertacli.tinytrain.train import train_and_save

    torch.set_num_threads(threads)
    info = train_and_save(spec, out, seed, on_step=lambda k, loss: queue.put((spec.name, k, loss)))
    queue.put((spec.name, "done", info))


def train_parallel(specs: list[Spec], out: Path, seed: int, threads: int, bar: Any) -> dict[str, dict]:
    """Train every spec at once, one spawned process each; returns training.json contents by name."""
    import multiprocessing as mp
    from queue import Empty

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = {s.name: ctx.Process(target=_worker, args=(s, out, seed, threads, queue), daemon=True) for s in specs}
    tasks = {s.name: bar.add_task(s.name, total=s.steps, loss=float("nan")) for s in specs}
    for p in procs.values():
        p.start()
    done: dict[str, dict] = {}
    while len(done) < len(procs):
        try:
            name, step, payload = queue.get(timeout=2)
        except Empty:
            dead = [n for n, p in procs.items() if n not in done and p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"training {', '.join(dead)} failed (exit code {procs[dead[0]].exitcode})")
            continue
        if step == "done":
            done[name] = payload
        else:
            bar.update(tasks[name], completed=step, loss=payload)
    for p in procs.values():
        p.join()
    return done


def train_sequential(specs: list[Spec], out: Path, seed: int, threads: int, bar: Any) -> dict[str, dict]:
    """Train the specs one after the other in this process."""
    import torch

    from ertacli.tinytrain.train import train_and_save

    torch.set_num_threads(threads)
    done = {}
    for s in specs:
        task = bar.add_task(s.name, total=s.steps, loss=float("nan"))
        done[s.name] = train_and_save(s, out, seed, lambda k, loss, t=task: bar.update(t, completed=k, loss=loss))
    return done
