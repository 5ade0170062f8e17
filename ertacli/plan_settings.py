"""What a plan (or a generate run) was made for, in the user's terms, and the one check of a run against it.

`plan.json` records `settings` (pipeline class, num_inference_steps, height, width, frames, guidance_scale and
whether the pipeline uses it, dtype, other plain call settings) and `model` (the transformer's class, config and
weights digest: `ertacli.identity`). The CLI (`generate`/`eval`/`sweep`/`export --plan`, `fit`) and the API
(`enable_cache`'s per-call check) build a `RunSettings` for what they are about to run and call `check_settings`:
one function, one set of messages, each naming the setting as the user writes it (`guidance_scale 4.0`,
`height/width 16x16`). A setting either side does not know (None) is not compared.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import PlanMismatch

REDO = "re-run calibration with this run's settings (`ertacache search` then `fit`, or ertacli.calibrate)"
GUIDANCE_REDO = ("a plan runs only at the guidance it was calibrated at for now; re-run calibration at "
                 "guidance_scale {g} (`ertacache search` then `fit`, or ertacli.calibrate)")
CALL_KEYS = ("num_inference_steps", "height", "width", "num_frames", "guidance_scale")
NOT_SETTINGS = ("prompt", "negative_prompt_embeds", "generator", "latents", "output_type", "return_dict",
                "callback", "attention_kwargs", "joint_attention_kwargs")  # inputs, not settings of the call
GUIDANCE_USES = ("embedded", "cfg", "unused")


@dataclass
class RunSettings:
    """A run's or call's settings in the user's terms; None: not known here (not compared)."""

    pipeline: str | None = None
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    guidance_scale: float | None = None
    guidance: str | None = None  # how the pipeline uses guidance_scale: embedded | cfg (when > 1) | unused
    dtype: str | None = None
    call: dict = field(default_factory=dict)  # other plain settings (negative_prompt, true_cfg_scale, ...)
    model: dict | None = field(default=None, repr=False)  # ertacli.identity: transformer, config, weights
    legacy_key: str | None = field(default=None, repr=False)  # the old settings digest (plans made before this)

    def to_json(self) -> dict:
        """What plan.json / generate.json record as `settings` (the model identity is recorded as `model`)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "legacy_key")}


def guidance_use(pipe: Any, config: dict | None) -> str:
    """How a pipeline uses guidance_scale: "embedded" (a guidance embedding: every value matters), "cfg"
    (classifier-free guidance when > 1: a second branch) or "unused" (e.g. FLUX without guidance embedding,
    whose classifier-free guidance is `true_cfg_scale`)."""
    if (config or {}).get("guidance_embeds"):
        return "embedded"
    cls = pipe if isinstance(pipe, type) else type(pipe)
    try:
        params = inspect.signature(cls.__call__).parameters
    except (TypeError, ValueError):
        return "cfg"
    if "guidance_scale" not in params or "true_cfg_scale" in params:
        return "unused"
    if not isinstance(pipe, type) and getattr(getattr(pipe, "model", None), "guidance", None) is False:
        return "unused"  # an adapter model without classifier-free guidance
    return "cfg"


def default_of(pipe: Any, name: str) -> Any:
    """The default of a pipeline call argument (what a call that omits it runs with), None if it has none."""
    cls = pipe if isinstance(pipe, type) else type(pipe)
    try:
        param = inspect.signature(cls.__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _plain(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str)) or v is None


def settings_of_call(pipe: Any, call_kwargs: dict, dtype: str | None, model: dict | None,
                     extra: dict | None = None) -> RunSettings:
    """The settings of pipeline calls made with `call_kwargs` (calibrate's, or a recipe's `sampling:` section)."""
    kw = dict(call_kwargs)
    guidance = kw.get("guidance_scale", default_of(pipe, "guidance_scale"))
    call = {k: v for k, v in kw.items() if k not in CALL_KEYS and k not in NOT_SETTINGS and _plain(v)}
    call.update(extra or {})
    cls = pipe if isinstance(pipe, type) else type(pipe)
    return RunSettings(
        pipeline=cls.__name__, steps=_int(kw.get("num_inference_steps")), height=_int(kw.get("height")),
        width=_int(kw.get("width")), frames=_int(kw.get("num_frames")),
        guidance_scale=float(guidance) if isinstance(guidance, (int, float)) else None,
        guidance=guidance_use(pipe, (model or {}).get("config")), dtype=dtype, call=call, model=model)


def recipe_settings(recipe, loaded: Any, load: Any, model: dict | None) -> RunSettings:
    """The settings of a recipe's runs (its `sampling:` section, dtype, prompt encoder) on its pipeline class
    (`loaded.pipe` when loaded; else the diffusers class of that name, so no model needs loading)."""
    from .backbones import ADAPTER, get_backbone
    from .backbones.sampler import recipe_call_kwargs

    name = recipe.model.pipeline
    pipe = None
    if loaded is None and name != ADAPTER:
        import diffusers

        pipe = getattr(diffusers, name, None)
    if pipe is None:
        loaded = loaded or load()
    pipe, media = (loaded.pipe, loaded.backbone.media) if loaded is not None else (pipe, get_backbone(name).media)
    s = recipe.sampling
    extra = {"negative_prompt": s.negative_prompt, "text_encoder": recipe.model.text_encoder}
    if s.max_sequence_length is not None:
        extra["max_sequence_length"] = s.max_sequence_length
    return settings_of_call(pipe, recipe_call_kwargs(recipe, media), str(recipe.model.dtype), model, extra=extra)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _same(where: str, name: str, recorded: Any, actual: Any, redo: str = REDO) -> None:
    if recorded is not None and actual is not None and recorded != actual:
        raise PlanMismatch(f"{where} was made with {name} {recorded}, this run has {actual}: {redo}")


def check_model(where: str, recorded: dict | None, actual: dict | None) -> None:
    """The transformer's class, then its config (first differing key), then its weights digest."""
    if not recorded or not actual:
        return
    _same(where, "model class", recorded.get("transformer"), actual.get("transformer"))
    want, have = recorded.get("config"), actual.get("config")
    if isinstance(want, dict) and isinstance(have, dict) and want != have:
        key = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[0]
        raise PlanMismatch(f"{where} was made with model config {key} {want.get(key)}, this run has "
                           f"{have.get(key)}: another model; {REDO}")
    w0, w1 = recorded.get("weights"), actual.get("weights")
    if w0 and w1 and w0 != w1:
        src = f" ({actual['source']})" if actual.get("source") else ""
        raise PlanMismatch(f"{where} was made with model weights sha256 {w0[:16]}, this run's model{src} has "
                           f"{w1[:16]}: other weights than the plan was calibrated on; re-run calibration on this model "
                           f"(`ertacache search` then `fit`, or ertacli.calibrate)")


def _size(values: list) -> str:
    return "x".join(str(v) for v in values)


def check_size(where: str, recorded: dict, run: RunSettings) -> None:
    """height/width, then frames, as the user writes them (16x16, not a latent shape)."""
    for label, keys in (("height/width", ("height", "width")), ("frames", ("frames",))):
        want, have = [recorded.get(k) for k in keys], [getattr(run, k) for k in keys]
        if None not in want and None not in have and want != have:
            raise PlanMismatch(f"{where} was made with {label} {_size(want)}, this run has {_size(have)}: "
                               f"re-run calibration at {label} {_size(have)} (`ertacache search` then `fit`, "
                               f"or ertacli.calibrate)")


def check_guidance(where: str, recorded: dict, run: RunSettings) -> None:
    """Guidance other than the plan's is refused (for now) where the pipeline uses it; a two-branch (CFG) plan
    on a one-branch call (guidance_scale <= 1) is refused with it."""
    g0, g1 = recorded.get("guidance_scale"), run.guidance_scale
    use = recorded.get("guidance") or run.guidance
    if g0 is None or g1 is None or use == "unused" or float(g0) == float(g1):
        return
    g0, g1 = float(g0), float(g1)
    if use == "cfg" and g0 <= 1 and g1 <= 1:
        return  # no classifier-free guidance either way: the value is not used
    note = ""
    if use == "cfg" and (g0 > 1) != (g1 > 1):
        note = (" (a two-branch plan, with classifier-free guidance, on a one-branch call)" if g0 > 1 else
                " (a one-branch plan on a call with classifier-free guidance)")
    raise PlanMismatch(f"{where} was made with guidance_scale {g0}, this run has {g1}{note}: "
                       f"{GUIDANCE_REDO.format(g=g1)}")


def check_settings(where: str, recorded: dict | None, model: dict | None, run: RunSettings) -> None:
    """The one check of a run or call against what a plan (or a generate run) was made for; raises
    PlanMismatch with one line naming the first setting that differs."""
    check_model(where, model, run.model)
    rec = recorded or {}
    _same(where, "pipeline", rec.get("pipeline"), run.pipeline)
    _same(where, "dtype", rec.get("dtype"), run.dtype)
    _same(where, "steps", rec.get("steps"), run.steps)  # sampling.steps; num_inference_steps in a call
    check_size(where, rec, run)
    check_guidance(where, rec, run)
    calls = rec.get("call") if isinstance(rec.get("call"), dict) else {}
    for k in sorted(set(calls) & set(run.call)):
        _same(where, k, calls[k], run.call[k])


def size_mismatch(where: str, recorded: dict | None, layout: str | None, want: list[int], have: list[int]) -> str:
    """The message for a call whose latents are another size than the plan's: the size as the user wrote it
    (height/width, frames) and, where the layout shows it, this call's."""
    rec = recorded or {}
    hw, frames = [rec.get("height"), rec.get("width")], rec.get("frames")
    if None in hw:
        return (f"{where} was made with latent shape {want}, this run has {have}: re-run calibration at this "
                f"size (`ertacache search` then `fit`, or ertacli.calibrate)")
    axes = {"BCHW": (None, -2, -1), "BCFHW": (-3, -2, -1), "BFCHW": (-4, -2, -1)}.get(layout or "")
    label, made, now = "height/width", _size(hw), f"latents {have} instead of {want}"
    if axes is not None and len(want) == len(have):
        f_ax, h_ax, w_ax = axes
        if f_ax is not None and want[f_ax] != have[f_ax] and frames is not None:
            label, made, now = "frames", str(frames), f"latents with {have[f_ax]} frames instead of {want[f_ax]}"
        elif want[h_ax] and want[w_ax]:
            size = [hw[0] * have[h_ax] / want[h_ax], hw[1] * have[w_ax] / want[w_ax]]
            now = _size([int(x) for x in size]) if all(float(x).is_integer() for x in size) else now
    elif frames is not None:
        label, made = "height/width/frames", f"{_size(hw)}, {frames} frames"
    return (f"{where} was made with {label} {made}, this run has {now}: re-run calibration at this size "
            f"(`ertacache search` then `fit`, or ertacli.calibrate)")
