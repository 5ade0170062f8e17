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


def style_kwargs(embed: Any, style: str, prompts: Sequence[str], negative_prompt: str | None) -> dict[str, Any]:
    """Pipeline kwargs from embed(prompts) -> (tokens, pooled): Flux adds pooled (+ negatives), Wan negatives."""
    tokens, pooled = embed(list(prompts))
    out: dict[str, Any] = {"prompt_embeds": tokens}
    if style == "flux":
        out["pooled_prompt_embeds"] = pooled
        if negative_prompt:
            neg_tokens, neg_pooled = embed([negative_prompt] * len(prompts))
            out["negative_prompt_embeds"] = neg_tokens
            out["negative_pooled_prompt_embeds"] = neg_pooled
    else:
        out["negative_prompt_embeds"] = embed([negative_prompt or ""] * len(prompts))[0]
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
        if style not in ("flux", "wan"):
            raise ValueError(f"HashTextEncoder style must be 'flux' or 'wan', got {style!r}")
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
        """Flux: prompt_embeds + pooled (+ negatives if a negative prompt is given); Wan: prompt + negative embeds."""
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
