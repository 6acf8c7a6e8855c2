"""Process-group setup from torchrun / accelerate / SLURM environment variables.

After open_clip's ``open_clip_train/distributed.py``: parse the environment into a plain record,
initialise the group (nccl on GPU, gloo on CPU), and let rank 0 log and write.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank): torchrun and ``accelerate launch`` set RANK/WORLD_SIZE/LOCAL_RANK;
    under ``srun`` the SLURM_* equivalents are used (MASTER_ADDR/MASTER_PORT must then be exported
    by the sbatch script)."""
    def get(*names: str, default: int) -> int:
        return next((int(os.environ[n]) for n in names if os.environ.get(n)), default)
    return (get("RANK", "SLURM_PROCID", default=0), get("WORLD_SIZE", "SLURM_NTASKS", default=1),
            get("LOCAL_RANK", "SLURM_LOCALID", default=0))


def init_distributed(device: str = "auto") -> DistEnv:
    """The process group of :func:`ranks_from_env` (nccl on GPU, gloo on CPU) and this rank's device."""
    rank, world, local_rank = ranks_from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank=rank, world_size=world, device=dev)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_across(env: DistEnv, value: torch.Tensor) -> float:
    """Average a scalar over ranks (for logging the global-batch loss)."""
    value = value.detach().float().clone()
    if env.distributed:
        dist.all_reduce(value)
        value /= env.world_size
    return value.item()


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
