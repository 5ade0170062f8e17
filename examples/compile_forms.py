"""Time the ways of compiling a pipeline's transformer around `ertacli.enable_cache` (README, "torch.compile").

    ertacache search -m tiny-flux-random --lambda 0.8 --set sampling.steps=6 -q
    python examples/compile_forms.py results/tiny-flux-random/search-*/plans/lambda-0.8 --rounds 40

Each form gets its own copy of the recipe's pipeline in this process; after one warm-up call each (the compile),
the forms are called in turn `--rounds` times and the median time per pipeline call is printed as a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

FORMS = ["no compile", "`enable_cache(pipe, plan, compile=True)`",
         "`torch.compile(pipe.transformer)`, then `enable_cache`", "`enable_cache`, then `torch.compile(pipe.transformer)`",
         "`pipe.transformer.compile()`", "`pipe.transformer.compile_repeated_blocks()`"]


def _prepared(form: str, loaded, plan):
    import torch

    import ertacli

    pipe = loaded.pipe
    if form.startswith("`torch.compile"):
        pipe.transformer = torch.compile(pipe.transformer)
    elif form == "`pipe.transformer.compile()`":
        pipe.transformer.compile()
    elif form == "`pipe.transformer.compile_repeated_blocks()`":
        pipe.transformer.compile_repeated_blocks()
    ertacli.enable_cache(pipe, plan, compile="compile=True" in form)
    if form.endswith("then `torch.compile(pipe.transformer)`"):
        pipe.transformer = torch.compile(pipe.transformer)
    return pipe


def main(argv: list[str] | None = None) -> None:
    import torch

    import ertacli
    from ertacli.backbones.loader import load_pipeline
    from ertacli.recipe import resolve_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--recipe", default="tiny-flux-random")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    plan = ertacli.load_plan(args.plan)
    recipe = resolve_recipe(args.recipe, [f"sampling.steps={plan.steps}"])
    runs = {}
    for form in FORMS:
        loaded = load_pipeline(recipe, "cpu")
        kwargs = dict(num_inference_steps=plan.steps, height=recipe.sampling.height, width=recipe.sampling.width,
                      output_type="latent", **loaded.encoder.pipeline_kwargs(["a red circle"], ""))
        runs[form] = (_prepared(form, loaded, plan), kwargs, [])
        runs[form][0](**kwargs)  # compiles
    for _ in range(args.rounds):
        for pipe, kwargs, times in runs.values():
            start = time.perf_counter()
            pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))
            times.append(time.perf_counter() - start)
    print("| form | ms per pipeline call | NFE |\n|---|---|---|")
    for form, (pipe, _, times) in runs.items():
        print(f"| {form} | {1000 * statistics.median(times):.1f} | {ertacli.last_call_stats(pipe)['nfe']} |")


if __name__ == "__main__":
    main()
