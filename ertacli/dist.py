"""Data parallelism over prompts with torch.distributed, detected from torchrun's environment.

Single-process use needs nothing: without torchrun's variables every function here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UserError


@dataclass
class World:
    """This process's place: rank, world size, and whether a process group is live."""

    rank: int = 0
    size: int = 1
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """Deterministic shard of n items: every size-th index starting at rank."""
        return list(range(self.rank, n, self.size))


WORLD = World()


def launched() -> bool:
    """True under torchrun / accelerate launch (WORLD_SIZE > 1 in the environment)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE={raw[:40]!r} is not an integer; unset it, or launch with torchrun") from None
    if size > 1 and not all(os.environ.get(k) for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        raise UserError(f"WORLD_SIZE={size} is set without RANK/MASTER_ADDR/MASTER_PORT: launch with "
                        f"`torchrun --nproc-per-node {size} -m ertacli ...`, or unset WORLD_SIZE")
    return size > 1


def init(device: str) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); idempotent."""
    global WORLD
    if WORLD.active or not launched():
        return WORLD
    import torch
    import torch.distributed as dist

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    WORLD = World(dist.get_rank(), dist.get_world_size(), True)
    return WORLD


def local_device(device: str) -> str:
    """cuda -> cuda:LOCAL_RANK under a launcher; anything else unchanged."""
    if launched() and device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def all_sum(value):
    """Sum a float or a float64 tensor over ranks (identity in one process)."""
    if not WORLD.active:
        return value
    import torch
    import torch.distributed as dist

    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t if isinstance(value, torch.Tensor) else float(t)


def broadcast(obj):
    """Rank 0's object on every rank."""
    if not WORLD.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not WORLD.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * WORLD.size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if WORLD.active:
        import torch.distributed as dist

        dist.barrier()
