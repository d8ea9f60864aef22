"""``torch.distributed`` for adasmooth's commands, launched by ``torchrun`` on one machine or many.

One process per device (``torchrun --nproc-per-node N``); several machines add ``--nnodes M --node-rank R
--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (the same endpoint on every machine). The backend is
``nccl`` for CUDA devices and ``gloo`` otherwise. Without torchrun's environment everything runs in one
process and these helpers are no-ops.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800  # a rank that waits longer than this for the others fails with a clear error


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device = "cpu", *, timeout_s: float | None = None) -> tuple[int, int, str]:
    """Join the process group torchrun set up (idempotent); returns ``(rank, world_size, device)``.

    On CUDA each process takes the GPU of its ``LOCAL_RANK``. ``timeout_s`` (default
    ``$ADASMOOTH_DIST_TIMEOUT`` or 1800 s) bounds how long a rank waits for the others, so a dead rank makes
    the rest exit with an error instead of hanging.
    """
    device = str(device)
    if not launched_by_torchrun():
        return 0, 1, device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        timeout = timeout_s if timeout_s is not None else float(os.environ.get("ADASMOOTH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
        logger.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size(), device


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (any picklable object made by our own code), in rank order; ``[obj]`` alone."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
