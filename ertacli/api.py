"""The public API: use a calibrated plan on your own diffusers pipeline, or calibrate one from Python.

    plan = ertacli.load_plan("results/flux/fit-.../plan")
    ertacli.enable_cache(pipe, plan)          # pipe: your FluxPipeline / WanPipeline / ... (any dtype, offload, LoRA)
    image = pipe(prompt, num_inference_steps=plan.steps, ...).images[0]
    ertacli.last_call_stats(pipe)             # {"nfe": 12, "nfe_per_branch": {"cond": 12}, ...}

Repeated calls need no reset: the engine sees each pipeline call start by itself (docs/method.md), whether or
not the transformer class resets diffusers hooks. `pipe.transformer` may be compiled (`torch.compile(...)`,
`.compile()`, `.compile_repeated_blocks()`) before or after `enable_cache`, or pass `compile=True`. The first call checks the plan against the call and raises `PlanMismatch` naming what
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
    """The Backbone of `pipe`: registered under `backbone` or its class name, else read by discovery."""
    from .backbones import get_backbone
    from .backbones.discover import backbone_of

    name = backbone or type(pipe).__name__
    if not hasattr(pipe, "transformer"):
        if backbone is None:
            raise UserError(f"{name} is not a pipeline with a .transformer: pass backbone='FluxPipeline' (or another "
                            f"registered pipeline class) when enabling a plan on a bare transformer")
        return get_backbone(name)
    return backbone_of(pipe, backbone)


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
    """Checks each stream's first call in a pipeline call against the plan; raises PlanMismatch naming the setting.

    What the call is made of (model class and config, pipeline, dtype, steps, guidance) goes through the same
    `plan_settings.check_settings` as the CLI's `--plan` check, with the same messages; then the branch, the
    scheduler and the latent size. Everything the plan side needs is prepared here, once.
    """

    def __init__(self, plan: Plan, pipe, transformer):
        from .backbones import get_backbone
        from .identity import identity_of
        from .plan_settings import guidance_use

        self.plan, self.pipe, self.transformer = plan, pipe, transformer
        self.model = identity_of(transformer, weights=False)  # the API trusts your weights (LoRA, quantised)
        self.guidance = guidance_use(pipe, self.model["config"]) if pipe is not None else None
        try:
            self.layout = get_backbone(plan.model_id.split(":", 1)[0]).latent_layout
        except UserError:  # a plan of a pipeline registered under another name (backbone=): sizes as latents
            self.layout = None
        self.want_config = _config(plan.scheduler.get("config", {}))

    def __call__(self, call, output) -> None:
        try:
            self._check(call.branch, list(output.shape[1:]), call.k)
        except PlanMismatch:
            from .engine import reset_ertacache

            reset_ertacache(self.transformer)  # the aborted call leaves no state behind
            raise

    def settings(self):
        """This call's settings as far as the pipeline shows them (sizes are checked on the latents)."""
        from .plan_settings import RunSettings

        pipe, sched = self.pipe, getattr(self.pipe, "scheduler", None)
        steps = getattr(sched, "timesteps", None) if sched is not None else None
        guidance = getattr(pipe, "guidance_scale", None) if pipe is not None else None
        return RunSettings(pipeline=type(pipe).__name__ if pipe is not None else None,
                           steps=len(steps) if steps is not None else None,
                           guidance_scale=float(guidance) if isinstance(guidance, (int, float)) else None,
                           guidance=self.guidance, dtype=self.model["dtype"], model=self.model)

    def _check(self, branch: str, shape: list[int], step: int = 0) -> None:
        from .plan_settings import check_settings, size_mismatch

        p, what = self.plan, self.plan.where
        if p.settings is not None:
            check_settings(what, p.settings, p.model, self.settings())
        elif p.model_class:
            require_same(what, "model class", p.model_class, self.model["transformer"], REDO, PlanMismatch)
        if branch not in p.branches:
            raise PlanMismatch(f"{what} has branches {p.branches}, this call runs branch {branch!r} (guidance or "
                               f"negative prompt differ): {REDO}")
        first = int((p.streams or {}).get(branch, (0,))[0])
        if step != first:  # Wan2.2: the experts switch at another step than the plan's
            raise PlanMismatch(f"{what} runs stream {branch!r} from step {first}, this call from step {step} (the "
                               f"pipeline switches denoisers elsewhere: boundary_ratio differs?): {REDO}")
        want = p.sample_shape.get(branch)
        if want is not None and list(want) != shape:  # before the sigmas, which a resolution-dependent shift moves
            raise PlanMismatch(size_mismatch(what, p.settings, self.layout, list(want), shape))
        sched = getattr(self.pipe, "scheduler", None)
        if sched is not None:
            self._check_scheduler(sched)

    def _check_scheduler(self, sched) -> None:
        p, what = self.plan, self.plan.where
        require_same(what, "num_inference_steps", p.steps, len(sched.timesteps), REDO, PlanMismatch)
        names = [c.__name__ for c in type(sched).__mro__]
        recorded = p.scheduler.get("class")
        if recorded and recorded not in names:
            require_same(what, "scheduler", recorded, type(sched).__name__, REDO, PlanMismatch)
        want, have = self.want_config, _config(sched.config)
        diff = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if diff:
            k = diff[0]
            require_same(what, f"scheduler config {k}", want[k], have[k], REDO, PlanMismatch)
        sigmas = [float(s) for s in getattr(sched, "sigmas", [])]
        if sigmas and p.base_sigmas and not _sigmas_close(sigmas, p.base_sigmas):
            raise PlanMismatch(f"{what} was made with other sigmas (shift, or a resolution-dependent shift: "
                               f"another size) than this call's: {REDO}")


class StepTransfer:
    """A call at another step count than the plan's runs the plan transferred to it (`ertacli.transfer`, SPEC "Plans
    across settings"): decided at step 0 of the call, before the transformer runs, from the scheduler's timesteps
    and sigmas, in the hooks' eager code (never inside a compiled graph); a call at the plan's own T (and no
    `nfe_share`/`nfe` asked) runs the plan itself, untouched. Transferred plans are kept per sigma schedule."""

    def __init__(self, plan: Plan, controller, check: CallCheck, host, channel_dim: int,
                 nfe_share: float | None = None, nfe: int | None = None):
        import copy

        self.plan, self.ctl, self.check, self.host, self.channel_dim = plan, controller, check, host, channel_dim
        self.nfe_share, self.nfe = nfe_share, nfe
        self.own = copy.copy(controller)  # the plan's own steps, sets, coefficients and schedule
        self.used: Plan = plan
        self.plans: dict[tuple, Plan] = {}

    @property
    def transferred(self) -> bool:
        return self.used is not self.plan

    def __call__(self, call) -> None:
        sched = getattr(self.host, "scheduler", None)
        steps = getattr(sched, "timesteps", None) if sched is not None else None
        if steps is None:
            return  # a bare transformer: the plan as calibrated
        if len(steps) == self.plan.steps and self.nfe_share is None and self.nfe is None:
            if self.transferred:
                self._use(self.plan, self.own)
            return
        sigmas = tuple(float(x) for x in getattr(sched, "sigmas", []))
        if self.transferred and self.used.base_sigmas == list(sigmas):
            return
        try:
            plan = self.plans.get(sigmas)
            if plan is None:
                from .transfer import expert_split, transfer_plan

                split = expert_split(self.host, sched) if self.plan.streams else None
                plan = transfer_plan(self.plan, list(sigmas), self.nfe_share, self.nfe, len(steps), split)
                self.plans[sigmas] = plan
        except PlanMismatch:
            from .engine import reset_ertacache

            reset_ertacache(self.check.transformer)
            raise
        self._use(plan, plan_controller(plan, self.channel_dim))

    def _use(self, plan: Plan, controller) -> None:
        """Run `plan` from this step on; a planned scheduler (adjusted sigmas) follows a transferred plan's sigmas."""
        from .engine import LiveSchedule

        sched = self.host.scheduler
        if hasattr(sched, "live"):
            controller.schedule = controller.schedule or LiveSchedule(plan.base_sigmas, fixed=plan.base_sigmas)
            sched.live = controller.schedule
        self.ctl.retarget(controller)
        self.used = self.check.plan = plan


def plan_controller(plan: Plan, channel_dim: int):
    """The controller that applies a plan: its cached steps, predictor, adjusted sigmas and rectification."""
    from .calibration.passes import apply_controller

    return apply_controller(plan, channel_dim, plan.coeffs(), plan.adjusted_sigmas)


def enable_cache(pipe, plan: Plan | str, *, backbone: str | None = None, compile: bool = False,
                 nfe_share: float | None = None, nfe: int | None = None) -> Plan:
    """Attach a plan's cache to `pipe` (a diffusers pipeline, or a bare transformer with `backbone=`).

    Every later `pipe(...)` call runs the plan until `disable_cache(pipe)`; returns the plan. A call at another
    step count than the plan's runs the plan transferred to it (docs/method.md "Step-count transfer") at the
    plan's NFE share, or at `nfe_share` (computed share of the calls) or `nfe` (calls per sample) when given;
    `last_call_stats` says so. `compile=True`
    compiles each transformer block class's forward once (the caching logic stays eager); compiling the
    transformer yourself (`torch.compile`, `.compile()`, `.compile_repeated_blocks()`, before or after) does the same.
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
    if nfe_share is not None and not (isinstance(nfe_share, (int, float)) and 0 < nfe_share <= 1):
        raise UserError(f"nfe_share={nfe_share!r}: give the computed share of the transformer calls, in (0, 1]")
    if nfe is not None and not (isinstance(nfe, int) and nfe >= 2):
        raise UserError(f"nfe={nfe!r}: give the transformer calls per sample, an integer of at least 2")
    disable_cache(pipe)
    ctl = plan_controller(plan, bb.channel_dim)
    ctl.check = CallCheck(plan, host if host.scheduler is not None else None, _transformer(pipe))
    ctl.prepare = StepTransfer(plan, ctl, ctl.check, host, bb.channel_dim, nfe_share, nfe)
    session = Session(host, bb, ctl, 0, compile).__enter__()
    _SESSIONS[session.transformer] = session
    return plan


def _transformer(pipe):
    """The transformer the hooks sit on: `pipe.transformer` (or a bare transformer), unwrapped from torch.compile."""
    from .engine.diffusers_compat import unwrap

    return unwrap(pipe.transformer if hasattr(pipe, "transformer") else pipe)


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
    """NFE (full transformer calls) and cached calls per branch of the last pipeline call with a plan enabled, the
    step count it ran (`steps`), the plan's (`calibrated_steps`), whether the plan was transferred to it and the
    NFE of the plan it ran (`plan_nfe`)."""
    session = _SESSIONS.get(_transformer(pipe))
    if session is None:
        raise UserError("no ertacache plan is enabled on this pipeline: call ertacli.enable_cache(pipe, plan)")
    stats = session.controller.call_stats()
    tr = session.controller.prepare
    return {"nfe": sum(stats["nfe"].values()), "cached": sum(stats["cached"].values()),
            "nfe_per_branch": dict(stats["nfe"]), "cached_per_branch": dict(stats["cached"]),
            "steps": tr.used.steps, "calibrated_steps": tr.plan.steps, "transferred": tr.transferred,
            "plan_nfe": tr.used.nfe}


def pipeline_identity(pipe, call_kwargs: dict, residual: str, name: str | None = None,
                      made_by: str = "ertacli.calibrate") -> dict:
    """How a plan calibrated from Python names its model and settings: the model by content (transformer class,
    config and a digest of its weights as they are in memory), the call settings in the user's terms."""
    from .identity import dtype_name, identity_of, weights_folder
    from .plan_settings import settings_of_call

    folder = weights_folder(pipe.transformer)
    source = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    model = identity_of(pipe.transformer, source=str(folder or source) if (folder or source) else None)
    settings = settings_of_call(pipe, call_kwargs, dtype_name(pipe.transformer), model)
    key = hashlib.sha256(json.dumps({"settings": settings.to_json(), "weights": model["weights"],
                                     "residual": residual}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"recipe": name or f"python:{type(pipe).__name__}", "recipe_key": key,
            "model_id": f"{type(pipe).__name__}:{source or 'in-memory'}", "settings": settings.to_json(),
            "model": model, "made_by": made_by}


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
              holdout: float = 0.25, micro_batch: int = 0, save_to: str | None = None, quiet: bool = False,
              auto_trials: int = 40, **call_kwargs) -> Plan:
    """profile -> search -> fit on your own pipeline, in memory; returns the fitted Plan (saved if `save_to`).

    Give one of `lam` (threshold), `nfe` (transformer calls per sample) or `target_speedup` (predicted).
    `method="auto"` searches the configuration at that target (`ertacli.calibration.auto`, at most
    `auto_trials` candidates scored on the held-out prompts; a `lam` is first turned into the count the
    hidden-space first-order threshold policy caches at it, as `ertacache search --method auto --lambda` does);
    `save_to` then also writes auto.csv. `call_kwargs` are the pipeline-call settings (num_inference_steps,
    height, width, guidance_scale, ...); prompts go through `prompt_encoder` (default: `prompt=`, which needs the
    pipeline's text encoder). `nfe=N` gives exactly N transformer calls per sample. Progress bars as the CLI
    shows them (`quiet=True`: none). The same function as the CLI's: `ertacli.calibration.run.calibrate_plan`.
    """
    from .backbones.sampler import Sampler
    from .calibration.run import MethodConfig, Target, calibrate_plan
    from .calibration.samples import Samples

    if sum(x is not None for x in (lam, nfe, target_speedup)) != 1:
        raise UserError("calibrate needs exactly one of lam=, nfe= or target_speedup=")
    if "num_inference_steps" not in call_kwargs:
        raise UserError("calibrate needs num_inference_steps= (and the other settings you will generate with)")
    if prompt_encoder is None:
        from .backbones.text import check_pipeline_encodes_prompts

        check_pipeline_encodes_prompts(pipe)
    config = MethodConfig.preset(method, auto_trials)
    bb = resolve_backbone(pipe, backbone)
    sampler = Sampler(pipe, bb, prompt_encoder or prompt_kwargs_encoder(), dict(call_kwargs),
                      str(getattr(pipe, "device", "cpu")), getattr(pipe.transformer, "dtype", None), micro_batch)
    samples = Samples.grid(list(prompts), [int(s) for s in seeds])
    identity = pipeline_identity(pipe, call_kwargs, config.cache.residual,
                                 made_by=f"ertacli.calibrate(method={method!r})")
    result = calibrate_plan(sampler, samples, Target(lam=lam, nfe=nfe, speedup=target_speedup), config, identity,
                            holdout, quiet=quiet)
    if save_to is not None:
        from .calibration.auto import save_auto

        save_auto(result.plan, result.auto_rows, save_to) if result.auto_rows is not None else result.plan.save(save_to)
    return result.plan
