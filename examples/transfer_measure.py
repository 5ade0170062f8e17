"""Step-count transfer on the trained tiny-flux (docs/method.md, "Step-count transfer"): run from the checkout root."""
import time

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
def cal_at(T, n, **kw):
    return ertacli.calibrate(pipe, cal, seeds=[0, 1], nfe=n, prompt_encoder=enc, num_inference_steps=T, quiet=True, **base, **kw)
def images(T):
    return [pipe(num_inference_steps=T, output_type="pt", generator=torch.Generator("cpu").manual_seed(0), **base, **enc([p])).images for p in ev]
def score(plan, T):
    ref = images(T)
    with ertacli.cached(pipe, plan):
        out, nfe = [], []
        for p in ev:
            out.append(pipe(num_inference_steps=T, output_type="pt", generator=torch.Generator("cpu").manual_seed(0), **base, **enc([p])).images)
            nfe.append(ertacli.last_call_stats(pipe))
    return sum(psnr(o, r) for o, r in zip(out, ref)) / len(ev), nfe[0]
t0 = time.time()
p20 = cal_at(20, 10)
print("plan20", p20.cached_steps, p20.adjusted_sigmas is not None, p20.rectification.enabled, p20.predictor, flush=True)
for T in (20, 14, 28):
    db, st = score(p20, T)
    print(f"T=20 plan at T'={T}: {db:.2f} dB nfe {st['nfe']} transferred {st['transferred']}", flush=True)
for T, n in ((14, 7), (28, 14)):
    db, st = score(cal_at(T, n), T)
    print(f"recalibrated at T'={T} NFE {n}: {db:.2f} dB nfe {st['nfe']}", flush=True)
print("seconds", time.time() - t0)
