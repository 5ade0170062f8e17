"""Step-count transfer on the trained tiny-flux (docs/method.md, "Step-count transfer"): run from the checkout root."""
import torch

import ertacli
from ertacli.backbones.loader import load_pipeline
from ertacli.recipe import resolve_recipe, read_prompt_file
from ertacli.evaluation.metrics import psnr
torch.set_num_threads(1)
loaded = load_pipeline(resolve_recipe("tiny-flux", []), "cpu")
pipe, enc = loaded.pipe, ertacli.minilm_encoder("flux")
cal = read_prompt_file("prompts/tiny-calibration.txt")
ev = read_prompt_file("prompts/tiny-eval.txt")[:6]
base = dict(height=16, width=16, guidance_scale=3.5)
def run(T):
    return [pipe(num_inference_steps=T, output_type="pt", generator=torch.Generator("cpu").manual_seed(0), **base, **enc([p])).images for p in ev]
p20 = ertacli.calibrate(pipe, cal, seeds=[0, 1], nfe=10, prompt_encoder=enc, num_inference_steps=20, quiet=True, **base)
pred = p20.predictor
variants = {"full": p20, "no-rect": p20.copy(rectify=dict(p20.rectify, enabled=False)),
            "no-rect-gain1": p20.copy(rectify=dict(p20.rectify, enabled=False), predictor=dict(pred, c=1.0)),
            "gain1": p20.copy(predictor=dict(pred, c=1.0)),
            "reuse": p20.copy(rectify=dict(p20.rectify, enabled=False), predictor={"kind": "reuse", "order": 1, "abscissa": "sigma", "c": 0.0})}
for T in (14, 28):
    ref = run(T)
    for name, plan in variants.items():
        with ertacli.cached(pipe, plan):
            out = run(T)
            st = ertacli.last_call_stats(pipe)
        print(f"T'={T} {name}: {sum(psnr(o, r) for o, r in zip(out, ref)) / 6:.2f} dB nfe {st['nfe']} {st['transferred']}", flush=True)
