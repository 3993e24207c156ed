"""Which process am I, and waiting for the others: torch.distributed when its group exists, else the launcher's
environment.

Lightning's DDP launcher (strategy=ddp) starts ranks 1..N-1 at the first `trainer.fit` of rank 0, as new
processes running the same command from the top, with LOCAL_RANK / NODE_RANK / WORLD_SIZE set (and sets
them in rank 0 too); the process group is made inside that fit and outlives it, so later fits reuse it.
Before a rank's first fit there is no group: only the environment says which rank this is.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # a global rank, where a launcher sets one


def group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    if group_ready():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 outside any distributed run)."""
    if group_ready():
        return dist.get_rank()
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    # Lightning's own launcher exports no global rank: on node 0 it is LOCAL_RANK; beyond node 0 the
    # processes per node are not in the environment, and this value is only known to be > 0
    local, node = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("NODE_RANK", "0"))
    return local if node == 0 else node * world_size() + local


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if group_ready() and dist.get_world_size() > 1:
        dist.barrier()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every rank (a collective: every rank must call it); `value` itself without a group."""
    if not group_ready() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
