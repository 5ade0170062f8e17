"""Discovery (ertacli.backbones.discover) against the registry and on block classes it cannot read."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ertacli
from ertacli.backbones import get_backbone, tiny_zoo
from ertacli.backbones import discover as disc

REGISTERED = {"flux": "FluxPipeline", "wan2.1-t2v": "WanPipeline", "cogvideox": "CogVideoXPipeline",
              "hunyuanvideo": "HunyuanVideoPipeline", "sd3": "StableDiffusion3Pipeline", "ltx": "LTXPipeline"}
# Not pipeline facts: the registry's tiny builder and the scheduler the full-size model ships with.
REGISTRY_ONLY = ("tiny_builder", "default_scheduler")


def _fields(bb) -> dict:
    return {k: v for k, v in dataclasses.asdict(bb).items() if k not in REGISTRY_ONLY}


def _short_call(tiny):
    kwargs = {**tiny.call, **tiny.encode(["a cat"]), "num_inference_steps": 2, "output_type": "pt"}
    return lambda: tiny.pipe(generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("family", sorted(REGISTERED))
def test_discovery_equals_registry(family, monkeypatch):
    """Same Backbone fields (branches observed on a short uncached call) and the same plan as the registry."""
    tiny = tiny_zoo.build(family)
    found = disc.observe_branches(tiny.pipe, disc.discover(tiny.pipe), _short_call(tiny))
    assert _fields(found) == _fields(get_backbone(REGISTERED[family]))

    def plan():
        return ertacli.calibrate(tiny.pipe, ["a red fox", "a blue bird"], seeds=(0,), prompt_encoder=tiny.encode,
                                 holdout=0.5, lam=0.2, **tiny.call)
    registered = plan()
    monkeypatch.setattr(disc, "is_registered", lambda name: False)  # the registry out of the way
    discovered = plan()
    assert discovered.cached_steps == registered.cached_steps and discovered.branches == registered.branches
    assert discovered.rectify == registered.rectify and discovered.adjusted_sigmas == registered.adjusted_sigmas


class OddBlock(torch.nn.Module):
    def forward(self, hidden_states, encoder_hidden_states=None):
        return {"h": hidden_states}["h"] * 2, encoder_hidden_states, hidden_states


class TextFirstBlock(torch.nn.Module):
    def forward(self, hidden_states, encoder_hidden_states=None):
        return encoder_hidden_states, hidden_states.clone()


def test_block_returns_read_or_refused():
    assert disc.read_block_returns(TextFirstBlock) == (1, 0)
    with pytest.raises(ertacli.UserError, match=r"OddBlock.*register_block\(OddBlock"):
        disc.read_block_returns(OddBlock)


def test_unreadable_transformer_is_one_line():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ertacli.UserError, match=r"Net: no block list found \(ModuleLists: stages.*register_backbone"):
        disc.block_lists(Net())


def test_register_block_is_public():
    ertacli.register_block(TextFirstBlock, hidden_index=1, encoder_index=0)
    assert disc.DiffusersPrivate.get(TextFirstBlock) == (1, 0)


def test_discovery_is_stable_after_registering_read_blocks():
    """Reading a block class registers it with diffusers; that must not make other lists of it look like stacks
    (Lumina2's noise and context refiners hold the class of its `layers`)."""
    pipe = tiny_zoo.build("lumina2").pipe
    first = disc.discover(pipe)
    assert first.block_lists == ("layers",) and disc.discover(pipe) == first
