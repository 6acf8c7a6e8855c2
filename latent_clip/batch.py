"""Batch surgery on LATENT-style dicts (``{"samples": (B, ...), "noise_mask"?, "batch_index"?}``).

Plain dicts and tensors, no ComfyUI: every other key is kept, ``batch_index`` records which item
of the original batch each sample was (so samplers give it the same noise), and a per-sample
``noise_mask`` follows its samples while a shared (batch 1) mask is kept as is. Mirrors
ComfyUI's LatentFromBatch.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def select(latent: dict[str, Any], indices: Sequence[int]) -> dict[str, Any]:
    """The items ``indices`` (in that order) of ``latent``; raises on an empty selection."""
    samples = latent["samples"]
    batch = samples.shape[0]
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("cannot select an empty batch")
    if any(not 0 <= i < batch for i in indices):
        raise IndexError(f"indices {indices} out of range for a batch of {batch}")
    out = dict(latent)
    out["samples"] = samples[indices]  # a copy (advanced indexing)
    mask = latent.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim >= 3 and mask.shape[0] > 1:
        out["noise_mask"] = mask[[i % len(mask) for i in indices]]  # a shorter mask cycles, as in ComfyUI
    original = latent.get("batch_index") or list(range(batch))
    out["batch_index"] = [original[i] for i in indices]
    return out


def replace(latent: dict[str, Any], which: torch.Tensor, new_samples: torch.Tensor) -> dict[str, Any]:
    """``latent`` with the items where ``which`` (B,) is True taken from ``new_samples`` (B, ...)."""
    samples = latent["samples"]
    keep = (~which.to(samples.device).bool()).view(-1, *([1] * (samples.ndim - 1)))
    return {**latent, "samples": torch.where(keep, samples, new_samples.to(samples))}
