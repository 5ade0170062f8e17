"""Describe any diffusers DiT pipeline from the loaded object: no registration needed (SPEC "Any diffusers DiT").

`discover(pipe)` reads, from the pipeline and its transformer:
- the block stack: the transformer's ModuleLists whose block class diffusers' block registry knows, else the
  conventional names, in definition (= forward) order; a block class diffusers does not know is read from the
  `return` statements of its forward (which position holds `hidden_states` / `encoder_hidden_states`) and
  registered with diffusers, or refused in one line naming it;
- the branches: the `cache_context` names the pipeline's `__call__` uses (`observe_branches` narrows them to
  the ones a given call runs); a pipeline that sets none runs one stream, "cond_uncond" (a batched CFG call is
  one branch);
- media, latent layout and channel axis: video when the call takes `num_frames`; "packed" (B, tokens, C) when
  the pipeline packs its latents, else BCHW (image), BFCHW (CogVideoX-style transformers) or BCFHW (video).

The registry (`ertacli.register_backbone`) stays for overrides: `backbone_of` returns a registered Backbone
when the pipeline's class name has one, else the discovered one. Everything that touches diffusers' private
names is in `DiffusersPrivate` below (one place to adapt when diffusers changes it).
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import replace

from ertacli.backbones import Backbone, get_backbone, is_registered
from ertacli.errors import UserError

CONVENTIONAL = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers", "double_stream_blocks",
                "single_stream_blocks")
"""Attribute names of block lists used when no ModuleList holds a block class diffusers registers."""
UNBATCHED = ("txt_ids", "img_ids", "image_rotary_emb", "rope_interpolation_scale")
"""Transformer arguments that carry no batch dimension (micro-batching leaves them whole) when forward takes them."""
NO_CONTEXT_BRANCH = "cond_uncond"
"""The first stream of a pipeline that names no cache_context (a batched CFG call is one branch)."""
NO_CONTEXT_BRANCHES = (NO_CONTEXT_BRANCH, "call1")
"""Its streams: a second call within a step (an unbatched negative prompt) is `call1` (engine/positions.py)."""
DENOISERS = ("transformer", "transformer_2", "unet", "prior", "decoder", "transformer_3")
"""Pipeline components that denoise (the engine hooks `transformer` and Wan2.2's `transformer_2`)."""
EXPERT_PREFIXES = ("high/", "low/", "transformer/", "transformer_2/")
"""Stream-name prefixes of two-transformer pipelines: Wan2.2's experts (boundary_ratio), else attribute names."""
READ_HERE: set[type] = set()
"""Block classes whose return layout discovery read and registered: not evidence of a block list next time
(Lumina2's refiner lists hold the class of its main `layers`)."""
_CONTEXT = re.compile(r"""cache_context\(\s*["'](\w+)["']""")
REGISTER_HINT = ("register it: ertacli.register_block({cls}, hidden_index=0, encoder_index=None) with the "
                 "positions its forward returns, or ertacli.register_backbone(Backbone(...)) for the pipeline")


class DiffusersPrivate:
    """What discovery reads from diffusers' private names, in one place: the block registry
    (`diffusers.hooks._helpers.TransformerBlockRegistry`) and a pipeline's `_pack_latents`."""

    @staticmethod
    def packs_latents(pipe) -> bool:
        """Whether the pipeline packs its latents into (B, tokens, C) before the loop."""
        return callable(getattr(pipe, "_pack_latents", None))

    @staticmethod
    def _registry():
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

        return TransformerBlockRegistry, TransformerBlockMetadata

    @classmethod
    def known(cls, block_cls: type) -> bool:
        reg, _ = cls._registry()
        try:
            reg.get(block_cls)
        except ValueError:
            return False
        return True

    @classmethod
    def get(cls, block_cls: type) -> tuple[int | None, int | None]:
        reg, _ = cls._registry()
        meta = reg.get(block_cls)
        return meta.return_hidden_states_index, meta.return_encoder_hidden_states_index

    @classmethod
    def register(cls, block_cls: type, hidden_index: int, encoder_index: int | None) -> None:
        reg, meta = cls._registry()
        reg.register(block_cls, meta(return_hidden_states_index=hidden_index,
                                     return_encoder_hidden_states_index=encoder_index))


def register_block(block_cls: type, hidden_index: int = 0, encoder_index: int | None = None) -> None:
    """Tell the engine where a block class's forward returns its hidden states (and the text stream, if any).

    A block returning one tensor: `register_block(MyBlock)`; one returning `(encoder_hidden_states,
    hidden_states)`: `register_block(MyBlock, hidden_index=1, encoder_index=0)`.
    """
    if not isinstance(block_cls, type):
        raise UserError(f"register_block needs a block class, got {block_cls!r}")
    DiffusersPrivate.register(block_cls, int(hidden_index), None if encoder_index is None else int(encoder_index))


def _root_name(node: ast.AST) -> str | None:
    """`hidden_states` for `hidden_states`, `hidden_states.to(x)`, `hidden_states[...]`; None otherwise."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def read_block_returns(block_cls: type) -> tuple[int, int | None]:
    """(hidden index, encoder index) from the `return` statements of a block's forward; UserError if unreadable."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(block_cls.forward)))
    except (OSError, TypeError, SyntaxError):
        raise UserError(f"block class {block_cls.__name__}: its forward's source cannot be read, so where it returns "
                        f"the hidden states is unknown; " + REGISTER_HINT.format(cls=block_cls.__name__)) from None
    fn = tree.body[0]
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]
    layouts = set()
    for ret in returns:
        if not isinstance(ret.value, ast.Tuple):
            layouts.add((0, None))
            continue
        names = [_root_name(e) for e in ret.value.elts]
        if names.count("hidden_states") != 1 or len(names) > 2:
            layouts.add(("?", tuple(names)))
            continue
        enc = names.index("encoder_hidden_states") if "encoder_hidden_states" in names else None
        layouts.add((names.index("hidden_states"), enc))
    if len(layouts) != 1 or "?" in next(iter(layouts)):
        seen = ", ".join(str(x) for x in sorted(map(str, layouts))) or "no return statement"
        raise UserError(f"block class {block_cls.__name__}: its forward returns {seen}, not a readable "
                        f"(hidden_states[, encoder_hidden_states]); " + REGISTER_HINT.format(cls=block_cls.__name__))
    return next(iter(layouts))


def block_lists(transformer) -> tuple[str, ...]:
    """The transformer's block ModuleLists in definition order: registered block classes, else conventional names."""
    import torch

    lists = [(name, mod) for name, mod in transformer.named_children()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0]
    known = tuple(name for name, mod in lists
                  if DiffusersPrivate.known(type(mod[0])) and type(mod[0]) not in READ_HERE)
    if known:
        return _same_stream(transformer, known)
    found = _same_stream(transformer, tuple(name for name, _ in lists if name in CONVENTIONAL))
    if not found:
        names = ", ".join(name for name, _ in lists) or "none"
        raise UserError(f"{type(transformer).__name__}: no block list found (ModuleLists: {names}; looked for a "
                        f"block class in diffusers' block registry or the names {', '.join(CONVENTIONAL)}); "
                        f"register the pipeline: ertacli.register_backbone(Backbone(..., block_lists=(...)))")
    return found


def _takes_text(block) -> bool:
    try:
        return "encoder_hidden_states" in inspect.signature(type(block).forward).parameters
    except (TypeError, ValueError):
        return False


def _same_stream(transformer, names: tuple[str, ...]) -> tuple[str, ...]:
    """The leading lists that see the same hidden-state sequence: once blocks stop taking the text stream
    separately (Chroma's single blocks run on [text; image] concatenated), the stack's tokens change there."""
    if not names or not _takes_text(getattr(transformer, names[0])[0]):
        return names
    keep = [n for n in names]
    for i, n in enumerate(names[1:], start=1):
        if not _takes_text(getattr(transformer, n)[0]):
            keep = list(names[:i])
            break
    return tuple(keep)


def ensure_block_metadata(transformer, lists: tuple[str, ...]) -> None:
    """Register, with diffusers, the return layout of every block class in the stack it does not know yet."""
    for name in lists:
        for cls in {type(b) for b in getattr(transformer, name)}:
            if not DiffusersPrivate.known(cls):
                register_block(cls, *read_block_returns(cls))
                READ_HERE.add(cls)


def context_names(pipeline_cls: type) -> tuple[str, ...]:
    """The cache_context names a pipeline class's `__call__` uses, in order of appearance."""
    try:
        src = inspect.getsource(pipeline_cls.__call__)
    except (OSError, TypeError):
        return ()
    return tuple(dict.fromkeys(_CONTEXT.findall(src)))


def layout(pipe, transformer, media: str) -> tuple[str, int]:
    """(latent layout, channel axis) of the transformer's input."""
    if DiffusersPrivate.packs_latents(pipe):
        return "packed", -1
    if media == "image":
        return "BCHW", 1
    if "temporal_compression_ratio" in dict(getattr(transformer, "config", {}) or {}):
        return "BFCHW", 2  # CogVideoX-style transformers take (B, F, C, H, W)
    return "BCFHW", 1


def media_of(pipe) -> str:
    """The media: video when the pipeline's call takes num_frames, else image."""
    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        params = {}
    return "video" if "num_frames" in params else "image"


def denoisers(pipe) -> list[str]:
    """Names of the pipeline's components that hold a denoiser (set, not None)."""
    return [n for n in DENOISERS if getattr(pipe, n, None) is not None]


def is_diffusers_pipeline(name: str) -> bool:
    """Whether diffusers has a pipeline class of this name (so discovery can describe it once loaded)."""
    import diffusers

    return name.endswith("Pipeline") and isinstance(getattr(diffusers, name, None), type)


def branches_by_name(pipeline: str) -> tuple[str, ...]:
    """Branches of a pipeline class by name: registered, else its cache_context names (before loading it)."""
    import diffusers

    if is_registered(pipeline) or not is_diffusers_pipeline(pipeline):
        return tuple(get_backbone(pipeline).branches)  # a name that is neither: the one-line "unknown" error
    return context_names(getattr(diffusers, pipeline)) or NO_CONTEXT_BRANCHES


def with_experts(pipe, backbone: Backbone) -> Backbone:
    """`backbone` hooking every denoiser of `pipe`: Wan2.2's `transformer_2` (the expert below `boundary_ratio`)
    as its own streams (`high/cond`, `low/cond`, ...); one line, never a half-cached run, for any other."""
    extra = [n for n in denoisers(pipe) if n != "transformer"]
    if not extra:
        return backbone
    name = type(pipe).__name__
    if extra != ["transformer_2"] or type(pipe.transformer_2) is not type(pipe.transformer):
        raise UserError(f"{name} holds more denoisers than `transformer` ({', '.join(extra)}): ertacache hooks "
                        f"`transformer` and a `transformer_2` of the same class only, so it refuses this pipeline "
                        f"rather than cache it in part")
    moe = getattr(getattr(pipe, "config", None), "boundary_ratio", None) is not None
    prefixes = EXPERT_PREFIXES[:2] if moe else EXPERT_PREFIXES[2:]
    return replace(backbone, transformers=("transformer", "transformer_2"), stream_prefixes=prefixes,
                   branches=tuple(p + b for p in prefixes for b in backbone.branches),
                   default_branch=backbone.default_branch)


def discover(pipe) -> Backbone:
    """A Backbone read from a loaded diffusers pipeline (registers unknown block classes' return layouts)."""
    transformer = getattr(pipe, "transformer", None)
    name = type(pipe).__name__
    if transformer is None:
        raise UserError(f"{name} has no .transformer (components: {', '.join(denoisers(pipe)) or 'none'}): "
                        f"ertacache caches diffusion transformers")
    lists = block_lists(transformer)
    ensure_block_metadata(transformer, lists)
    media = media_of(pipe)
    lay, ch = layout(pipe, transformer, media)
    names = context_names(type(pipe))
    try:
        params = inspect.signature(transformer.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return Backbone(pipeline=name, media=media, branches=names or NO_CONTEXT_BRANCHES, latent_layout=lay,
                    channel_dim=ch, block_lists=lists, default_scheduler=type(pipe.scheduler).__name__,
                    unbatched_args=tuple(a for a in UNBATCHED if a in params),
                    default_branch=names[0] if len(names) == 1 else "default" if names else NO_CONTEXT_BRANCH)


def backbone_of(pipe, name: str | None = None) -> Backbone:
    """The registered Backbone of `name` (default: the pipeline's class name), else the one discovery reads."""
    key = name or type(pipe).__name__
    if is_registered(key):
        return with_experts(pipe, get_backbone(key))
    if name is not None and name != type(pipe).__name__:
        get_backbone(name)  # raises the one-line "unknown pipeline" error
    return with_experts(pipe, discover(pipe))


def observe_branches(pipe, backbone: Backbone, run) -> Backbone:
    """`backbone` with the branches a call actually runs: `run()` makes one short uncached pipeline call."""
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager

    seen: list[str] = []

    class _Probe(ModelHook):
        _is_stateful = True

        def __init__(self, prefix: str):
            super().__init__()
            self._state_manager, self.prefix = StateManager(BaseState), prefix

        def new_forward(self, module, *args, **kwargs):
            ctx = self._state_manager._context
            name = self.prefix + (ctx.name if ctx is not None else backbone.default_branch)
            if name not in seen:
                seen.append(name)
            return self.fn_ref.original_forward(*args, **kwargs)

        def reset_state(self, module):
            return module

    registries = []
    for attr, prefix in zip(backbone.transformers, backbone.stream_prefixes):
        registries.append(HookRegistry.check_if_exists_or_initialize(getattr(pipe, attr)))
        registries[-1].register_hook(_Probe(prefix), "ertacache_probe")
    try:
        run()
    finally:
        for registry in registries:
            registry.remove_hook("ertacache_probe", recurse=False)
    return replace(backbone, branches=tuple(seen) or backbone.branches)
