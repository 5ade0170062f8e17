"""Use a calibrated plan in your own Wan pipeline script (here: the trained tiny Wan in models/tiny-wan).

    python examples/use_plan_wan.py PLAN --prompt "the digit 3 drifting left" --seed 0 --out clip.safetensors

PLAN is a plan folder written by `ertacache search` / `fit` (e.g. results/tiny-wan/fit-.../plan). The lines
marked "ertacache" are all a Wan2.1 user adds to their own `from_pretrained` script; for Wan2.1-T2V-1.3B the
pipeline line is `WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16)`
and the prompt goes in as text. The tiny model has no text encoder: its prompts are embedded with the MiniLM
encoder bundled with ertacache (models/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-wan"


def main(argv: list[str] | None = None) -> None:
    """Generate one clip with the plan enabled; save its frames (and final latents) as safetensors."""
    import torch
    from diffusers import WanPipeline
    from safetensors.torch import save_file

    import ertacli

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--prompt", default="the digit 3 drifting left")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="clip.safetensors")
    args = ap.parse_args(argv)

    pipe = WanPipeline.from_pretrained(str(MODEL), text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    embeds = ertacli.minilm_encoder("wan")([args.prompt])  # prompt_embeds + negative_prompt_embeds ("")

    plan = ertacli.load_plan(args.plan)                     # ertacache
    ertacli.enable_cache(pipe, plan)                        # ertacache
    call = dict(height=16, width=16, num_frames=8, guidance_scale=4.0, num_inference_steps=plan.steps, **embeds)
    frames = pipe(generator=torch.Generator("cpu").manual_seed(args.seed), output_type="pt", **call).frames
    stats = ertacli.last_call_stats(pipe)                   # ertacache: NFE per branch of that call
    latents = pipe(generator=torch.Generator("cpu").manual_seed(args.seed), output_type="latent", **call).frames
    ertacli.disable_cache(pipe)                             # ertacache
    save_file({"frames": frames[0].contiguous(), "latents": latents[0].contiguous()}, args.out)
    print(f"wrote {args.out}: {tuple(frames.shape[1:])} frames, NFE {stats['nfe_per_branch']}")


if __name__ == "__main__":
    main()
