"""ertacli.calibrate as a new user meets it: progress bars by default, one line when the prompts cannot be encoded."""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import pytest

import ertacli
from ertacli.backbones.sampler import recipe_call_kwargs
from ertacli.backbones.text import check_pipeline_encodes_prompts
from ertacli.errors import UserError


def test_no_text_encoder_is_one_line_before_any_model_call(tiny_flux):
    """tiny-flux is built with text_encoder=None (its prompts come as embeddings): with no prompt_encoder, the
    default `prompt=` cannot work, and calibrate says so before the transformer runs once."""
    loaded, recipe = tiny_flux
    calls = []
    handle = loaded.pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(UserError) as err:
            ertacli.calibrate(loaded.pipe, ["a red circle", "two blue squares"], lam=0.1,
                              **recipe_call_kwargs(recipe, "image"))
    finally:
        handle.remove()
    msg = str(err.value)
    assert "\n" not in msg and not calls
    assert msg.startswith("the prompts cannot be encoded: FluxPipeline.text_encoder is None; pass prompt_encoder=")
    assert "ertacli.minilm_encoder()" in msg and "load the pipeline with its text encoder" in msg


class _Config(dict):
    pass


def _pipe(**parts):
    """A stand-in pipeline: diffusers records each registered component in its config."""
    return SimpleNamespace(config=_Config({k: ("x", "y") for k in parts}), **parts)


def test_check_names_the_missing_part_and_passes_complete_pipelines():
    full = dict(text_encoder=object(), tokenizer=object(), text_encoder_2=object(), tokenizer_2=object())
    check_pipeline_encodes_prompts(_pipe(**full))
    check_pipeline_encodes_prompts(_pipe(**full, text_encoder_3=None, tokenizer_3=None))  # SD3: T5 is optional
    check_pipeline_encodes_prompts(SimpleNamespace(transformer=object()))  # not a diffusers pipeline: nothing to say
    with pytest.raises(UserError, match=r"SimpleNamespace\.tokenizer_2 is None"):
        check_pipeline_encodes_prompts(_pipe(**{**full, "tokenizer_2": None}))


def test_calibrate_shows_progress_by_default(tiny_flux, monkeypatch):
    """Every calibration pass reaches the progress bars with quiet=False unless quiet=True is passed, as the CLI
    shows them without -q (the same bars: the CLI's commands call the same calibration functions)."""
    import ertacli.progress

    real, seen = ertacli.progress.task, []

    @contextlib.contextmanager
    def recording(label, total, quiet=False):
        seen.append((label, quiet))
        with real(label, total, True) as advance:  # the bar itself stays off in the test's output
            yield advance

    for name, module in list(sys.modules.items()):
        if name.startswith("ertacli") and getattr(module, "task", None) is real:
            monkeypatch.setattr(module, "task", recording)
    loaded, recipe = tiny_flux
    ertacli.calibrate(loaded.pipe, ["a red circle", "two blue squares", "a green line", "one yellow dot"], lam=0.1,
                      method="ertacache", prompt_encoder=lambda p: loaded.encoder.pipeline_kwargs(p, ""),
                      **recipe_call_kwargs(recipe, "image"))
    kinds = {label.split()[0] for label, _ in seen}
    assert {"profile", "search", "fit"} <= kinds and all(quiet is False for _, quiet in seen), seen
