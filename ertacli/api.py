"""The public API: use a calibrated plan on your own diffusers pipeline, or calibrate one from Python.

    plan = ertacli.load_plan("results/flux/fit-.../plan")
    ertacli.enable_cache(pipe, plan)          # pipe: your FluxPipeline / WanPipeline / ... (any dtype, offload, LoRA)
    image = pipe(prompt, num_inference_steps=plan.steps, ...).images[0]
    ertacli.last_call_stats(pipe)             # {"nfe": 12, "nfe_per_branch": {"cond": 12}, ...}

Repeated calls need no reset: diffusers pipelines reset the hooks after every call and the hook resets the
controller with them. The first call checks the plan against the call and raises `PlanMismatch` naming what
differs. `calibrate` runs profile -> search -> fit in memory with the same functions the CLI runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from typing import Any, Callable, Iterator, Sequence

from .errors import PlanMismatch, UserError, require_same
from .plan import Plan

_SESSIONS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
REDO = "re-run `ertacache search` and `fit` (or ertacli.calibrate) with this call's settings"


def resolve_backbone(pipe, backbone: str | None = None):
    """The registered Backbone of `pipe` (its class name), or of `backbone` (a pipeline class name)."""
    from .backbones import get_backbone

    name = backbone or type(pipe).__name__
    if backbone is None and not hasattr(pipe, "transformer"):
        raise UserError(f"{name} is not a pipeline with a .transformer: pass backbone='FluxPipeline' (or another "
                        f"registered pipeline class) when enabling a plan on a bare transformer")
    return get_backbone(name)


class _BareTransformer:
    """A transformer used without its pipeline: what Session needs (`.transformer`, no scheduler swap)."""

    def __init__(self, transformer):
        self.transformer, self.scheduler = transformer, None


def _sigmas_close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y))) for x, y in zip(a, b))


def _config(cfg: dict) -> dict:
    """A scheduler config without private keys, JSON-normalised (tuples as lists)."""
    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}, default=str))


class CallCheck:
    """Checks the first computed call of each branch against the plan; raises PlanMismatch naming the field."""

    def __init__(self, plan: Plan, pipe, transformer):
        self.plan, self.pipe, self.transformer = plan, pipe, transformer

    def __call__(self, call, output) -> None:
        try:
            self._check(call.branch, list(output.shape[1:]))
        except PlanMismatch:
            from .engine import reset_ertacache

            reset_ertacache(self.transformer)  # the aborted call leaves no state behind
            raise

    def _check(self, branch: str, shape: list[int]) -> None:
        p, what = self.plan, self.plan.where
        if branch not in p.branches:
            raise PlanMismatch(f"{what} has branches {p.branches}, this call runs branch {branch!r} (guidance or "
                               f"negative prompt differ): {REDO}")
        if p.model_class:
            require_same(what, "model class", p.model_class, type(self.transformer).__name__, REDO, PlanMismatch)
        sched = getattr(self.pipe, "scheduler", None)
        if sched is not None:
            self._check_scheduler(sched)
        want = p.sample_shape.get(branch)
        if want is not None:
            require_same(what, f"latent shape (branch {branch})", list(want), shape,
                         "re-run `ertacache search` and `fit` at this size", PlanMismatch)

    def _check_scheduler(self, sched) -> None:
        p, what = self.plan, self.plan.where
        require_same(what, "num_inference_steps", p.steps, len(sched.timesteps), REDO, PlanMismatch)
        names = [c.__name__ for c in type(sched).__mro__]
        recorded = p.scheduler.get("class")
        if recorded and recorded not in names:
            require_same(what, "scheduler", recorded, type(sched).__name__, REDO, PlanMismatch)
        want, have = _config(p.scheduler.get("config", {})), _config(sched.config)
        diff = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if diff:
            k = diff[0]
            require_same(what, f"scheduler config {k}", want[k], have[k], REDO, PlanMismatch)
        sigmas = [float(s) for s in getattr(sched, "sigmas", [])]
        if sigmas and p.base_sigmas and not _sigmas_close(sigmas, p.base_sigmas):
            raise PlanMismatch(f"{what} was made with other sigmas (shift, or a resolution-dependent shift: "
                               f"another size) than this call's: {REDO}")


def plan_controller(plan: Plan, channel_dim: int):
    """The controller that applies a plan: its cached steps, predictor, adjusted sigmas and rectification."""
    from .calibration.passes import apply_controller

    return apply_controller(plan, channel_dim, plan.coeffs(), plan.adjusted_sigmas)


def enable_cache(pipe, plan: Plan | str, *, backbone: str | None = None, compile: bool = False) -> Plan:
    """Attach a plan's cache to `pipe` (a diffusers pipeline, or a bare transformer with `backbone=`).

    Every later `pipe(...)` call runs the plan until `disable_cache(pipe)`; returns the plan.
    """
    from .engine import Session
    from .plan import load_plan, validate

    plan = load_plan(plan) if not isinstance(plan, Plan) else plan
    bb = resolve_backbone(pipe, backbone)
    validate(plan, tuple(bb.branches))
    host = pipe if hasattr(pipe, "transformer") else _BareTransformer(pipe)
    if host.scheduler is None and plan.adjusted_sigmas is not None:
        raise UserError(f"{plan.where} adjusts the timesteps, which needs the pipeline's scheduler: pass the "
                        f"pipeline, not its transformer")
    disable_cache(pipe)
    ctl = plan_controller(plan, bb.channel_dim)
    ctl.check = CallCheck(plan, host if host.scheduler is not None else None, host.transformer)
    session = Session(host, bb, ctl, 0, compile).__enter__()
    _SESSIONS[host.transformer] = session
    return plan


def _transformer(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe


def disable_cache(pipe) -> None:
    """Detach the plan's hooks and restore the pipeline's scheduler (a no-op when none is attached)."""
    session = _SESSIONS.pop(_transformer(pipe), None)
    if session is not None:
        session.__exit__(None, None, None)


@contextlib.contextmanager
def cached(pipe, plan: Plan | str, **kwargs) -> Iterator[Plan]:
    """`with ertacli.cached(pipe, plan):` enables the plan for the block and disables it afterwards."""
    loaded = enable_cache(pipe, plan, **kwargs)
    try:
        yield loaded
    finally:
        disable_cache(pipe)


def last_call_stats(pipe) -> dict:
    """NFE (full transformer calls) and cached calls per branch of the last pipeline call with a plan enabled."""
    session = _SESSIONS.get(_transformer(pipe))
    if session is None:
        raise UserError("no ertacache plan is enabled on this pipeline: call ertacli.enable_cache(pipe, plan)")
    stats = session.controller.call_stats()
    return {"nfe": sum(stats["nfe"].values()), "cached": sum(stats["cached"].values()),
            "nfe_per_branch": dict(stats["nfe"]), "cached_per_branch": dict(stats["cached"])}


def pipeline_identity(pipe, call_kwargs: dict, residual: str, name: str | None = None) -> dict:
    """How a plan calibrated from Python names its model: class, source path and a digest of the call settings."""
    plain = {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}
    source = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    data = {"pipeline": type(pipe).__name__, "transformer": type(pipe.transformer).__name__, "call": plain,
            "residual": residual}
    key = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"recipe": name or f"python:{type(pipe).__name__}", "recipe_key": key,
            "model_id": f"{type(pipe).__name__}:{source or 'in-memory'}"}


def prompt_kwargs_encoder(negative_prompt: str | None = None) -> Callable[[list[str]], dict]:
    """Prompts passed as `prompt=` (the pipeline's own text encoder does the work)."""
    def encode(prompts: list[str]) -> dict:
        out: dict = {"prompt": list(prompts)}
        if negative_prompt:
            out["negative_prompt"] = [negative_prompt] * len(prompts)
        return out
    return encode


def minilm_encoder(style: str = "flux", negative_prompt: str = "") -> Callable[[list[str]], dict]:
    """The bundled MiniLM prompt encoder (for the tiny models): prompts -> prompt_embeds (+ pooled / negatives)."""
    from .backbones.minilm import MiniLMTextEncoder

    enc = MiniLMTextEncoder(style)
    return lambda prompts: enc.pipeline_kwargs(list(prompts), negative_prompt)


def method_settings(method: str):
    """(cache settings, fit settings) of a --method preset over the defaults, as the CLI applies it to a recipe."""
    from .calibration.run import MethodConfig

    cfg = MethodConfig.preset(method)
    return cfg.cache, cfg.fit


def calibrate(pipe, prompts: Sequence[str], *, seeds: Sequence[int] = (0,), lam: float | None = None,
              nfe: int | None = None, target_speedup: float | None = None, method: str = "ertacache-x1",
              prompt_encoder: Callable[[list[str]], dict] | None = None, backbone: str | None = None,
              holdout: float = 0.25, micro_batch: int = 0, save_to: str | None = None, quiet: bool = True,
              auto_trials: int = 40, **call_kwargs) -> Plan:
    """profile -> search -> fit on your own pipeline, in memory; returns the fitted Plan (saved if `save_to`).

    Give one of `lam` (threshold), `nfe` (transformer calls per sample) or `target_speedup` (predicted).
    `method="auto"` searches the configuration at that target (`ertacli.calibration.auto`, at most
    `auto_trials` candidates scored on the held-out prompts; a `lam` is first turned into the count the
    hidden-space first-order threshold policy caches at it, as `ertacache search --method auto --lambda` does);
    `save_to` then also writes auto.csv. `call_kwargs` are the pipeline-call settings (num_inference_steps,
    height, width, guidance_scale, ...); prompts go through `prompt_encoder` (default: `prompt=`).
    The same function as the CLI's: `ertacli.calibration.run.calibrate_plan`.
    """
    from .backbones.sampler import Sampler
    from .calibration.run import MethodConfig, Target, calibrate_plan
    from .calibration.samples import Samples

    if sum(x is not None for x in (lam, nfe, target_speedup)) != 1:
        raise UserError("calibrate needs exactly one of lam=, nfe= or target_speedup=")
    if "num_inference_steps" not in call_kwargs:
        raise UserError("calibrate needs num_inference_steps= (and the other settings you will generate with)")
    config = MethodConfig.preset(method, auto_trials)
    bb = resolve_backbone(pipe, backbone)
    sampler = Sampler(pipe, bb, prompt_encoder or prompt_kwargs_encoder(), dict(call_kwargs),
                      str(getattr(pipe, "device", "cpu")), getattr(pipe.transformer, "dtype", None), micro_batch)
    samples = Samples.grid(list(prompts), [int(s) for s in seeds])
    identity = pipeline_identity(pipe, call_kwargs, config.cache.residual)
    result = calibrate_plan(sampler, samples, Target(lam=lam, nfe=nfe, speedup=target_speedup), config, identity,
                            holdout, quiet=quiet)
    if save_to is not None:
        from .calibration.auto import save_auto

        save_auto(result.plan, result.auto_rows, save_to) if result.auto_rows is not None else result.plan.save(save_to)
    return result.plan
