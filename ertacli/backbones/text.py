"""Prompt encoders: an offline hashing encoder for tiny models and a pass-through for pretrained pipelines."""

from __future__ import annotations

import re
import zlib
from typing import Any, Protocol, Sequence

import torch

_WORD = re.compile(r"[a-z0-9']+")


class PromptEncoder(Protocol):
    """Turns prompts into keyword arguments for one pipeline call."""

    def pipeline_kwargs(self, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
        """Pipeline kwargs (embeddings or raw prompts) for a batch of prompts."""
        ...


def words(prompt: str) -> list[str]:
    """Lower-cased word tokens of a prompt."""
    return _WORD.findall(prompt.lower())


STYLES = {  # style: (pooled vector, attention mask, negatives always) -- pipelines' prompt_embeds conventions
    "flux": (True, False, False),  # FluxPipeline (true CFG only with a negative prompt)
    "wan": (False, False, True),  # WanPipeline, CogVideoXPipeline
    "sd3": (True, False, True),  # StableDiffusion3Pipeline
    "hunyuan": (True, True, False),  # HunyuanVideoPipeline (uncond only with true_cfg_scale and a negative)
    "ltx": (False, True, True),  # LTXPipeline
}


def token_mask(tokens: Any) -> Any:
    """(N, L) int64 mask of the non-zero token states; the first token always counts (like a BOS token)."""
    mask = (tokens.abs().sum(-1) > 0).long()
    mask[:, 0] = 1
    return mask


def style_kwargs(embed: Any, style: str, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
    """Pipeline kwargs from embed(prompts) -> (tokens, pooled) in a STYLES convention (pooled, masks, negatives)."""
    pooled, masked, always = STYLES[style]
    out: dict[str, Any] = {}

    def put(prefix: str, texts: list[str]) -> None:
        tokens, pool = embed(texts)
        out[f"{prefix}prompt_embeds"] = tokens
        if pooled:
            out[f"{prefix}pooled_prompt_embeds"] = pool
        if masked:
            out[f"{prefix}prompt_attention_mask"] = token_mask(tokens)

    put("", list(prompts))
    if negative_prompt or always:
        put("negative_", [negative_prompt or ""] * len(prompts))
    return out


class HashTextEncoder:
    """Deterministic offline text encoder: each word hashes (crc32) to a fixed random vector."""

    def __init__(
        self,
        dim: int,
        pooled_dim: int,
        max_tokens: int = 16,
        seed: int = 0,
        *,
        buckets: int = 4096,
        style: str = "flux",
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"HashTextEncoder style must be one of {', '.join(STYLES)}, got {style!r}")
        gen = torch.Generator("cpu").manual_seed(int(seed))
        self.dim, self.pooled_dim, self.max_tokens = int(dim), int(pooled_dim), int(max_tokens)
        self.buckets, self.style = int(buckets), style
        self.table = torch.randn(self.buckets, self.dim, generator=gen)
        self.pooled_table = torch.randn(self.buckets, self.pooled_dim, generator=gen)

    def _ids(self, prompt: str) -> list[int]:
        """Bucket ids of a prompt's words, truncated to max_tokens."""
        return [zlib.crc32(w.encode("utf-8")) % self.buckets for w in words(prompt)][: self.max_tokens]

    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (N, max_tokens, dim) zero-padded, and pooled (N, pooled_dim) word means."""
        tokens = torch.zeros(len(prompts), self.max_tokens, self.dim)
        pooled = torch.zeros(len(prompts), self.pooled_dim)
        for i, prompt in enumerate(prompts):
            ids = self._ids(prompt)
            if ids:
                idx = torch.tensor(ids)
                tokens[i, : len(ids)] = self.table[idx]
                pooled[i] = self.pooled_table[idx].mean(0)
        return tokens, pooled

    def pipeline_kwargs(self, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
        """prompt_embeds (+ pooled, masks, negatives) in this encoder's style (see STYLES)."""
        return style_kwargs(self.embed, self.style, prompts, negative_prompt)

    encode = pipeline_kwargs


class PipelineTextEncoder:
    """Pass-through encoder for pretrained pipelines: the pipeline's own text encoder does the work."""

    def __init__(self, max_sequence_length: int | None = None) -> None:
        self.max_sequence_length = max_sequence_length

    def pipeline_kwargs(self, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
        """prompt= / negative_prompt= (and max_sequence_length when set)."""
        out: dict[str, Any] = {"prompt": list(prompts)}
        if negative_prompt:
            out["negative_prompt"] = [negative_prompt] * len(prompts)
        if self.max_sequence_length is not None:
            out["max_sequence_length"] = int(self.max_sequence_length)
        return out

    encode = pipeline_kwargs


PROMPT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
"""The pipeline components that turn `prompt=` into embeddings (SD3's text_encoder_3 is optional in diffusers)."""


def check_pipeline_encodes_prompts(pipe: Any) -> None:
    """A pipeline given `prompt=` with no text encoder or tokenizer: one line saying so and what to pass instead,
    before any pipeline call (diffusers would fail inside its prompt encoding, after the model work has started)."""
    from ertacli.errors import UserError

    config = getattr(pipe, "config", None)
    declared = set(config.keys()) if hasattr(config, "keys") else set()
    missing = [name for name in PROMPT_PARTS if name in declared and getattr(pipe, name, None) is None]
    if missing:
        raise UserError(f"the prompts cannot be encoded: {type(pipe).__name__}.{missing[0]} is None; pass "
                        f"prompt_encoder= (e.g. ertacli.minilm_encoder() for the tiny models, or a function from "
                        f"prompts to prompt_embeds kwargs), or load the pipeline with its text encoder")
