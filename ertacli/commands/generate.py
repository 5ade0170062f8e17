"""generate: the pipeline on prompts x seeds, uncached or with a plan; media, latents, NFE and time per sample."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..calibration.samples import Samples
from ..errors import UserError
from ..progress import task
from ..runs.artifacts import load_tensors, read_json, save_tensors
from ..runs.job import Job

GENERATE_FILE = "generate.json"
GRID_MAX = 20  # samples shown in grid.png (every sample is saved on its own)
GRID_FRAMES = 9  # frames per clip in grid.png
GRID_COLUMNS = 5  # images per row in grid.png
LARGE_RUN = 500  # above this many samples, a warning with the projected time


def _save_media(run_path: Path, i: int, media, video: bool) -> str:
    """Write sample i as PNG, or as MP4 plus its uint8 frames tensor; returns the main file's name."""
    import torch

    from ..runs.media import save_image, save_video, to_uint8

    if not video:
        name = f"samples/{i:03d}.png"
        save_image(media, run_path / name)
        return name
    name = f"samples/{i:03d}.mp4"
    (run_path / "samples").mkdir(parents=True, exist_ok=True)
    save_video(media, run_path / name)
    save_tensors(run_path / f"samples/{i:03d}.frames.safetensors", {"frames": torch.from_numpy(to_uint8(media))})
    return name


def _write_record(run_path: Path, row: dict, latents) -> None:
    """One finished sample: its latents, then its record, each written under a temporary name and renamed."""
    from safetensors.torch import save_file

    from ..runs.guard import target

    lat = target(run_path / f"latents/{row['index']:03d}.safetensors")
    save_file({"latents": latents.contiguous()}, str(target(str(lat) + ".part")))
    os.replace(str(lat) + ".part", lat)  # replaces a link at `lat` itself, never what it points to
    rec = target(run_path / f"records/{row['index']:03d}.json")
    target(rec.with_suffix(".part")).write_text(json.dumps(row))
    os.replace(rec.with_suffix(".part"), rec)


MAX_RECORD_BYTES = 1 << 20


def _loads(path: Path) -> bool:
    """A sample file that is a regular file (not a link) and loads: a PNG decodes, a tensor file parses."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        return True
    except Exception:  # noqa: BLE001 - any unreadable or corrupt file means: redo the sample
        return False


def read_record(run_path: Path, i: int) -> dict | None:
    """Sample i's record when it, the files it names (its own samples/NNN.png|.mp4, nothing else) and its latents
    are intact and load, else None (redone on resume)."""
    rec = run_path / f"records/{i:03d}.json"
    try:
        if rec.is_symlink() or rec.stat().st_size > MAX_RECORD_BYTES:
            return None
        row = json.loads(rec.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(row, dict) or row.get("index") != i or row.get("file") not in (f"samples/{i:03d}.png",
                                                                                     f"samples/{i:03d}.mp4"):
        return None
    files = [run_path / f"latents/{i:03d}.safetensors"]
    files.append(run_path / (f"samples/{i:03d}.frames.safetensors" if row["file"].endswith(".mp4") else row["file"]))
    if row["file"].endswith(".mp4") and not (run_path / row["file"]).is_file():
        return None
    return row if all(_loads(f) for f in files) else None


def done_indices(run_path: Path, n: int, digest: str | None = None) -> set[int]:
    """Samples a (possibly interrupted) generate run already finished with these settings, files intact."""
    rows = {i: read_record(run_path, i) for i in range(n)}
    return {i for i, row in rows.items() if row is not None and (digest is None or row.get("settings") == digest)}


def runner_for(job: Job, plan_path: str | None):
    """The runner for a plan (checked against this run's model and settings) or, with no plan, the baseline."""
    from ..evaluation.runners import baseline_runner
    from ..runs.plan_runner import PlanRunner
    from ..plan import check_plan, load_plan

    if plan_path is None:
        return baseline_runner(job.sampler, job.recipe.cache.residual)
    plan = load_plan(plan_path)
    check_plan(plan, job.run_settings())
    return PlanRunner(job.sampler, plan)


def generate_samples(job: Job, samples: Samples, runner, run_path: Path, todo: list[int],
                     label: str = "generate", digest: str | None = None) -> None:
    """Run the samples `todo` one at a time after untimed warm-up calls; each is saved as soon as it is done."""
    video = job.loaded.backbone.media == "video"
    with runner, task(label, len(todo), job.quiet) as advance:
        for _ in range(job.recipe.eval.warmup if todo else 0):
            runner.run(samples.prompts[todo[0]], samples.seeds[todo[0]])
        for i in todo:
            out, nfe, cached = runner.run(samples.prompts[i], samples.seeds[i])
            row = {"index": i, "prompt": samples.prompts[i], "seed": samples.seeds[i], "nfe": nfe,
                   "cached_calls": cached, "seconds": out.seconds,
                   "transformer_seconds": out.transformer_seconds, "settings": digest}
            row["file"] = _save_media(run_path, i, out.media[0], video)
            _write_record(run_path, row, out.latents[0])
            advance()
            if i == todo[0] and len(todo) > LARGE_RUN:
                _warn_projected(len(todo), out.seconds)


def _warn_projected(n: int, seconds: float) -> None:
    """A large prompt set is not refused: say how long it will take, from the first sample's time."""
    import sys

    sys.stderr.write(f"warning: {n} samples to generate, about {n * seconds / 60:.1f} min at the first one's "
                     f"{seconds:.2f} s each (Ctrl-C keeps what is done; `generate --resume` continues)\n")


def _spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all of them when n <= k)."""
    return list(range(n)) if n <= k else [round(i * (n - 1) / (k - 1)) for i in range(k)]


def _merge(run, samples: Samples, video: bool, digest: str) -> None:
    """Rank 0, once every sample exists: samples table, one latents file, the grid."""
    import pandas as pd

    from ..runs.tables import save_table

    rows = [read_record(run.path, i) for i in range(len(samples))]
    bad = [f"{i:03d}" for i, row in enumerate(rows) if row is None or row.get("settings") != digest]
    if bad:
        raise UserError(f"{run.path}: records {', '.join(bad[:10])} are missing or were made with other settings "
                        f"than recipe.yaml/inputs.json; resume it to redo them: ertacache generate --resume {run.path}")
    lat = {f"sample.{i}": load_tensors(run.path / f"latents/{i:03d}.safetensors")["latents"] for i in range(len(rows))}
    save_tensors(run.file("latents.safetensors"), lat)
    save_sample_grid(run.path, rows, video)
    save_table(pd.DataFrame(rows), run.path, "samples")


def save_sample_grid(run_path: Path, rows: list[dict], video: bool) -> Path:
    """grid.png: each sample with its prompt (and seed) as caption; a clip is one row of evenly spaced frames."""
    from ..runs.media import save_captioned_grid

    rows = rows[:GRID_MAX]
    media = load_outputs(run_path, rows)
    label = lambda r: f"{r['prompt']} (seed {r['seed']})"
    if video:
        frames = [[clip[k] for k in _spaced(len(clip), GRID_FRAMES)] for clip in media]
        return save_captioned_grid(frames, [label(r) for r in rows], run_path / "grid.png", cell=64)
    per_row = GRID_COLUMNS
    cells = [media[i:i + per_row] for i in range(0, len(media), per_row)]
    caps = [[label(r) for r in rows[i:i + per_row]] for i in range(0, len(rows), per_row)]
    return save_captioned_grid(cells, caps, run_path / "grid.png", cell=128)


def run_generate(job: Job, samples: Samples, plan_path: str | None = None, runner=None,
                 resume: str | Path | None = None) -> Path:
    """Write a generate run directory (with a plan, uncached, or with `runner`); returns its path.

    Under torchrun each rank takes its shard of samples; `resume` continues an interrupted run directory (whose
    recorded settings must equal this job's: `generate --resume` rebuilds the job from the run, see resume.py).
    """
    from ..dist import WORLD, barrier
    from .resume import INPUTS, check_settings, settings_digest, settings_of

    runner = runner or runner_for(job, plan_path)
    video = job.loaded.backbone.media == "video"
    settings = settings_of(job, runner)
    digest = settings_digest(settings)
    if resume is not None:
        check_settings(Path(resume), read_json(Path(resume) / INPUTS).get("settings"), settings)
    with job.rundir("generate", resumable=True, existing=resume, shared=True) as run:
        if resume is None:
            job.start(run, "generate", samples.seeds)
            if WORLD.main:
                run.write_json(INPUTS, {"samples": samples.to_json(), "method": runner.info, "settings": settings,
                                        "settings_digest": digest})
        barrier()
        done = done_indices(run.path, len(samples), digest)
        todo = [i for i in WORLD.shard(len(samples)) if i not in done]
        generate_samples(job, samples, runner, run.path, todo, digest=digest)
        barrier()
        if WORLD.main:
            _merge(run, samples, video, digest)
            run.write_json(GENERATE_FILE, {
                "recipe_key": job.key, **runner.info, "samples": samples.to_json(), "device": job.device,
                "settings": job.run_settings().to_json(), "model": job.model_identity,
                "dtype": job.recipe.model.dtype, "media": "video" if video else "image",
                "resumed": bool(done), "settings_digest": digest,
            })
    return job.finished(run)


def load_outputs(run_dir: Path, rows: list[dict]) -> list:
    """Each sample's media as float [0, 1]: images (3, H, W) from PNG, videos (F, 3, H, W) from the frames tensor."""
    import numpy as np
    import torch
    from PIL import Image

    from ..runs.guard import inside

    out = []
    for row in rows:
        f = inside(run_dir, row["file"], "sample file")
        if f.suffix == ".png":
            arr = torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
        else:
            arr = load_tensors(f.with_name(f.stem + ".frames.safetensors"))["frames"]
        out.append(arr.movedim(-1, -3).float() / 255.0)
    return out
