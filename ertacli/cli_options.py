"""Options shared by the commands (one meaning per name), their parsers, and the deprecated aliases."""

from __future__ import annotations

from typing import List, Optional

import typer

from .errors import UserError

ModelOpt = typer.Option("tiny-flux", "--model", "-m", help="Recipe name (see `ertacache recipes`) or path to a recipe file.")
MethodOpt = typer.Option(None, "--method", help="Method preset over the recipe: ertacache (the paper), ertacache-x1, "
                         "ertacache-x2, ertacache-x2p, auto (see `ertacache methods`).")
AutoTrialsOpt = typer.Option(None, "--auto-trials", help="--method auto: candidates scored at most (default: recipe).")
SetOpt = typer.Option(None, "--set", help="Override a recipe field: --set sampling.steps=30 (repeatable).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when available, else CPU).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or progress lines.")
CompileOpt = typer.Option(False, "--compile", help="torch.compile each transformer block once (first call compiles).")
TrustAdapterOpt = typer.Option(False, "--trust-adapter", help="Allow a recorded run whose recipe imports a "
                               "model.adapter Python file to import it (reproduce, generate --resume).")
LambdaOpt = typer.Option(None, "--lambda", "-l", help="Threshold(s) of the cached-step search: repeat or comma list "
                         "(default: the recipe's search.lambdas).")
SAMPLES_HELP = "Evaluate on the first N eval samples (prompts x seeds)."
SamplesOpt = typer.Option(None, "--samples", help=SAMPLES_HELP)
PromptOpt = typer.Option(None, "--prompt", help="Prompt (repeatable; default: the recipe's eval prompts).")
PromptsOpt = typer.Option(None, "--prompts", help="Prompt file: one prompt per line, or a JSON list.")
SeedOpt = typer.Option(None, "--seed", help="Seed (repeatable; default: the recipe's eval seeds).")
PLAN_HELP = "Plan folder (or a search/fit run holding one plan)."
PlanOpt = typer.Option(None, "--plan", "-p", help=PLAN_HELP)
RequiredPlanOpt = typer.Option(..., "--plan", "-p", help=PLAN_HELP)
CompareOpt = typer.Option(False, "--compare", help="Also run the peers (each tuned to the plan's NFE) and a uniform cache.")
PredictorOpt = typer.Option(None, "--predictor", help="Cached-step predictor: reuse, extrapolate-1, extrapolate-2.")
PredictorsOpt = typer.Option(None, "--predictors", help="Cached-step predictors compared: reuse, extrapolate-1, "
                             "extrapolate-2; repeat or comma list (default: all).")
MethodsOpt = typer.Option(None, "--methods", help="Method presets compared at each --nfe: repeat or comma list "
                          "(default: all).")
NfeOpt = typer.Option(None, "--nfe", help="Matched-NFE targets, transformer calls per sample: repeat or comma list "
                      "(default: the recipe's search.nfe).")

from .choices import PREDICTOR_NAMES as PREDICTORS  # noqa: E402 (--predictor values: the one table)

DEPRECATED = {  # command: {old option: new option}; the old names still work, with a warning
    "search": {"--predictor extrapolate": "--predictor extrapolate-1|extrapolate-2", "--order": "--predictor extrapolate-N",
               "--nfe": "--target-nfe"},
    "overhead": {"--predictor": "--predictors"},
    "estimate": {"--seeds": "--n-seeds", "--calibration-prompts": "--n-calibration-prompts"},
}
"""Old names whose values mean what the same name means elsewhere (`search --nfe 8`: the NFE target 8, as in
`sweep --nfe 8`; `overhead --predictor reuse`: the predictor `search --predictor reuse` names)."""

RETIRED = {  # command: {old option: what to use}; the old name meant something else than the same name elsewhere
    "sweep": {"--target-speedup": "--pick-speedup (search's --target-speedup is a predicted speedup to reach)",
              "--min-psnr": "--pick-psnr (eval's --min-psnr is a quality gate)"},
    "estimate": {"--prompts": "--n-prompts (--prompts is a prompt file on generate and eval)"},
    "recipes": {"--methods": "`ertacache methods` (sweep's --methods lists the presets to compare)"},
}
"""Old names that would mean two things: given, they stop with one line naming the new name, before any work."""


def ablation_opt(default: bool):
    """--ablation/--no-ablation (default on for demo's tiny model, off for bench at full size)."""
    return typer.Option(default, "--ablation/--no-ablation", help="Add the paper's Table 3 rows.")


def deprecated(command: str, old: str) -> None:
    """Warn once that an old option name is deprecated, naming its replacement."""
    from .runs.console import say

    say(f"warning: `{command} {old}` is deprecated; use {DEPRECATED[command][old]}", "yellow", stderr=True)


def renamed(command: str, old: str, old_value, value, default):
    """The value of a renamed option: the new name's, else the deprecated old name's (warned), else the default."""
    if old_value is None:
        return default if value is None else value
    deprecated(command, old)
    if value is not None:
        raise UserError(f"give {DEPRECATED[command][old]} once (`{command} {old}` is its deprecated name)")
    return old_value


def retired_opt(command: str, old: str, flag: bool = False):
    """The hidden option of a retired name (a flag when the old one was); `retired()` refuses it when given."""
    why = f"Retired: use {RETIRED[command][old]}."
    return typer.Option(False if flag else None, old, hidden=True, help=why)


def retired(command: str, old: str, given) -> None:
    """A retired option name given: one line naming what to use instead (exit 2)."""
    if given not in (None, False):
        raise UserError(f"`{command} {old}` was renamed: use {RETIRED[command][old]}")


def numbers(values: Optional[List[str]], name: str, cast=float, example: str = "0.05,0.1") -> list:
    """A repeatable option that also takes comma lists (--lambda 0.05 --lambda 0.1,0.2; --nfe 10,8)."""
    out = []
    for v in values or []:
        for part in str(v).split(","):
            try:
                out.append(cast(part))
            except ValueError:
                kind = "a number" if cast is float else "an integer"
                raise UserError(f"{name}: {part!r} is not {kind} (e.g. {name} {example})")
    return out


def lambdas(values: Optional[List[str]]) -> list[float]:
    """--lambda values as floats."""
    return numbers(values, "--lambda")


def integers(values: Optional[List[str]], name: str) -> list[int]:
    """A repeatable integer option with comma lists."""
    return numbers(values, name, int, "10,8")


def names(values: Optional[List[str]]) -> list[str]:
    """A repeatable option of names that also takes comma lists (--methods a,b --methods c), blanks dropped."""
    return [part.strip() for v in values or [] for part in str(v).split(",") if part.strip()]


def auto_sets(trials: Optional[int]) -> list[str]:
    """--auto-trials N as a recipe override (N >= 1)."""
    if trials is None:
        return []
    if trials < 1:
        raise UserError(f"--auto-trials must be >= 1, got {trials}")
    return [f"search.auto_trials={trials}"]


def predictor_overrides(value: Optional[str], order: Optional[int]) -> list[str]:
    """--predictor (and the older --order) as recipe overrides; an unknown value is a one-line error."""
    if order is not None:
        deprecated("search", "--order")
    if value == "extrapolate":
        deprecated("search", "--predictor extrapolate")
        return ["cache.predictor=extrapolate"] + ([f"cache.order={order}"] if order else [])
    if value is not None and value not in PREDICTORS:
        raise UserError(f"--predictor {value!r}: choose from {', '.join(PREDICTORS)}")
    kind, fixed = PREDICTORS[value] if value else (None, None)
    out = [f"cache.predictor={kind}"] if kind else []
    chosen = fixed or order
    return out + ([f"cache.order={chosen}"] if chosen else [])
