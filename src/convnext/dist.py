"""torch.distributed plumbing: torchrun's env:// variables, NCCL on GPUs, gloo on CPU; rank 0 writes."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Returns (rank, world_size, local_rank); a plain ``python`` run is rank 0 of 1 and starts no group. Under
    torchrun a group is started even for one process, so that 1 and N processes shard data the same way.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        store = _restarted_group_store(world)
        if store is not None:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend, init_method="env://")
    return rank, world, local_rank


def _restarted_group_store(world: int) -> dist.Store | None:
    """The store of a group torchrun restarted (``--max-restarts``), with keys of its own; None otherwise.

    torchrun's agent keeps one TCPStore for all the restarts of its group (TORCHELASTIC_USE_AGENT_STORE),
    and the process group's keys (each rank's gloo or NCCL address) are the same names every time: a
    restarted rank can read the address of the dead rank it replaces and fail to connect (pytorch/pytorch
    #135712). The restart count, which every worker of one agent shares, names this attempt's keys. On several
    nodes each agent counts its own restarts, so there the names could differ: that case is left to torchrun
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives each group a fresh store; the README says so).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if (
        os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        or attempt == "0"
        or os.environ.get("GROUP_WORLD_SIZE", "1") != "1"
    ):
        return None
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=world,
        is_master=False,
        timeout=default_pg_timeout,
    )
    return dist.PrefixStore(f"convnext/restart_{attempt}", store)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (so every rank stops at the same step after a signal)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
