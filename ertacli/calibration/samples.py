"""Sample sets (prompts x seeds), their held-out split and this process's shard."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError
from ..plan import prompts_digest


@dataclass
class Samples:
    """A prompts x seeds set, expanded to one (prompt, seed) pair per sample."""

    prompts: list[str]
    seeds: list[int]

    @classmethod
    def grid(cls, prompts: list[str], seeds: list[int]) -> "Samples":
        """Every prompt with every seed, prompt-major (seeds in [0, 2**63 - 1])."""
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 2 ** 63 - 1]
        if bad:
            raise UserError(f"seed {str(bad[0])[:40]} is outside [0, 2**63 - 1]; use a non-negative integer seed")
        if not prompts:
            raise UserError("no prompts: give --prompt TEXT, a non-empty --prompts file, or the recipe's prompt file")
        return cls([p for p in prompts for _ in seeds], [int(s) for _ in prompts for s in seeds])

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: list[int]) -> "Samples":
        """The samples at these indices, in this order."""
        return Samples([self.prompts[i] for i in idx], [self.seeds[i] for i in idx])

    def first(self, n: int | None) -> "Samples":
        """The first n samples (all of them for None)."""
        if n is not None and n < 1:
            raise UserError(f"--samples {n}: evaluate at least 1 sample")
        return self if n is None else self.subset(list(range(min(len(self), n))))

    def take(self, n: int | None, option: str = "--samples") -> "Samples":
        """The first n samples for a user's option: more than there are is one line, never silently fewer."""
        if n is not None and n > len(self):
            raise UserError(f"{option} {n}: there are only {len(self)} eval samples (prompts x seeds); give at most "
                            f"{len(self)}, or more prompts/seeds")
        return self.first(n)

    def digest(self) -> str:
        return prompts_digest(self.prompts, self.seeds)

    def to_json(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "digest": self.digest()}

    def unique_prompts(self) -> list[str]:
        """The distinct prompts, in first-seen order."""
        return list(dict.fromkeys(self.prompts))

    def mine(self) -> tuple[list[int], "Samples"]:
        """This rank's deterministic shard (indices and samples); everything in one process."""
        from ..dist import WORLD

        if len(self) < WORLD.size:
            raise UserError(f"{len(self)} samples cannot be split over {WORLD.size} processes; "
                            f"add prompts/seeds or launch fewer processes")
        idx = WORLD.shard(len(self))
        return idx, self.subset(idx)


def split_holdout(samples: Samples, prompts: list[str], share: float) -> tuple[list[int], list[int]]:
    """Sample indices of the fit part and the held-out part (the last ceil(share * prompts) prompts, >= 1)."""
    n_hold = max(1, math.ceil(share * len(prompts)))
    held = set(prompts[len(prompts) - n_hold:])
    fit_idx = [i for i, p in enumerate(samples.prompts) if p not in held]
    hold_idx = [i for i, p in enumerate(samples.prompts) if p in held]
    return fit_idx, hold_idx
