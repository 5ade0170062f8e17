"""generate: the pipeline on prompts x seeds, uncached or with a plan; media, latents, NFE and time per sample."""

from __future__ import annotations

from pathlib import Path

from .common import Job, Samples, progress_bar, save_tensors

GENERATE_FILE = "generate.json"


def _save_media(run, i: int, media, video: bool) -> str:
    """Write sample i as PNG, or as MP4 plus its uint8 frames tensor; returns the main file's name."""
    import torch

    from ..media import save_image, save_video, to_uint8

    if not video:
        name = f"samples/{i:03d}.png"
        save_image(media, run.file(name))
        return name
    name = f"samples/{i:03d}.mp4"
    save_video(media, run.file(name))
    save_tensors(run.file(f"samples/{i:03d}.frames.safetensors"), {"frames": torch.from_numpy(to_uint8(media))})
    return name


def generate_samples(job: Job, samples: Samples, method, label: str = "generate"):
    """Run samples one at a time, after untimed warm-up calls; returns table rows and results."""
    rows, results = [], []
    with method, progress_bar(job.quiet) as bar:
        for _ in range(job.recipe.eval.warmup):
            method.run(samples.prompts[0], samples.seeds[0])
        task = bar.add_task(label, total=len(samples))
        for i, (prompt, seed) in enumerate(zip(samples.prompts, samples.seeds)):
            out, nfe, cached = method.run(prompt, seed)
            rows.append({"index": i, "prompt": prompt, "seed": seed, "nfe": nfe, "cached_calls": cached,
                         "seconds": out.seconds})
            results.append(out)
            bar.advance(task)
    return rows, results


def run_generate(job: Job, samples: Samples, plan_path: str | None = None, method=None) -> Path:
    """Write a generate run directory (with a plan, uncached, or with `method`); returns its path."""
    import pandas as pd

    from ..media import save_grid
    from ..tables import save_table
    from .methods import PlanMethod

    method = method or PlanMethod(job, plan_path)
    rows, results = generate_samples(job, samples, method)
    video = job.loaded.backbone.media == "video"
    with job.rundir("generate") as run:
        job.start(run, "generate", samples.seeds)
        for row, out in zip(rows, results):
            row["file"] = _save_media(run, row["index"], out.media[0], video)
        save_tensors(run.file("latents.safetensors"),
                     {f"sample.{r['index']}": out.latents[0] for r, out in zip(rows, results)})
        if not video:
            save_grid([out.media[0] for out in results], run.file("grid.png"), nrow=min(len(results), 8))
        save_table(pd.DataFrame(rows), run.path, "samples")
        run.write_json(GENERATE_FILE, {
            "recipe_key": job.key, **method.info, "samples": samples.to_json(), "device": job.device,
            "dtype": job.recipe.model.dtype, "media": "video" if video else "image",
        })
    return run.final_path


def load_outputs(run_dir: Path, rows: list[dict]) -> list:
    """Each sample's media as float [0, 1]: images (3, H, W) from PNG, videos (F, 3, H, W) from the frames tensor."""
    import numpy as np
    import torch
    from PIL import Image

    from .common import load_tensors

    out = []
    for row in rows:
        f = run_dir / row["file"]
        if f.suffix == ".png":
            arr = torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
        else:
            arr = load_tensors(f.with_name(f.stem + ".frames.safetensors"))["frames"]
        out.append(arr.movedim(-1, -3).float() / 255.0)
    return out
