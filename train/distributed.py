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
    """Where this process runs: its rank among ``world_size`` processes, its rank on this node
    (``local_rank``, which picks its GPU) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistEnv":
        """The ranks torchrun and ``accelerate launch`` set (RANK/WORLD_SIZE/LOCAL_RANK), or under ``srun``
        their SLURM_* equivalents (MASTER_ADDR/MASTER_PORT must then be exported by the sbatch script);
        rank 0 of 1 without either. ``device``: see :func:`rank_device`. Creates no process group."""
        def get(*names: str, default: int) -> int:
            return next((int(os.environ[n]) for n in names if os.environ.get(n)), default)
        local_rank = get("LOCAL_RANK", "SLURM_LOCALID", default=0)
        return cls(rank=get("RANK", "SLURM_PROCID", default=0), world_size=get("WORLD_SIZE", "SLURM_NTASKS", default=1),
                   local_rank=local_rank, device=rank_device(device, local_rank))


def rank_device(spec: str, local_rank: int) -> torch.device:
    """The device ``spec`` names for the process of ``local_rank``: ``auto`` is CUDA when available, else
    the CPU; a CUDA device without an index is this rank's GPU (``cuda:<local_rank>``); any other is kept."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def init_distributed(device: str = "auto") -> DistEnv:
    """:meth:`DistEnv.from_env`, with its process group initialised when it has several ranks (nccl on GPU,
    gloo on CPU) and its GPU made current."""
    env = DistEnv.from_env(device)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if env.distributed and not dist.is_initialized():
        os.environ.setdefault("RANK", str(env.rank))
        os.environ.setdefault("WORLD_SIZE", str(env.world_size))
        cuda = env.device.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=env.rank, world_size=env.world_size,
                                device_id=env.device if cuda else None)
    return env


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
