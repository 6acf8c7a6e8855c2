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
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def init_distributed(device: str = "auto") -> DistEnv:
    """torchrun and ``accelerate launch`` set RANK/WORLD_SIZE/LOCAL_RANK; under ``srun`` the SLURM_*
    equivalents are used (MASTER_ADDR/MASTER_PORT must then be exported by the sbatch script)."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
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
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=dev)


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
