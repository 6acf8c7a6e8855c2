"""Prompt scores of latents: cosine similarity and CLIP logits.

All functions take raw VAE latents (B, C, H, W) and return float32 tensors on the model's device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .contract import check_finite_result
from .fields import check_texts

if TYPE_CHECKING:  # the model module imports open_clip: only a loaded model brings it in
    from .model import LatentCLIP, Progress


@dataclass(frozen=True)
class Scores:
    """``cosine`` (B, P) in [-1, 1]; ``logits`` = ``logit_scale.exp() * cosine`` (B, P)."""

    cosine: torch.Tensor
    logits: torch.Tensor


def score_latents(model: LatentCLIP, latents: torch.Tensor, prompts: str | Sequence[str],
                  progress: Progress | None = None) -> Scores:
    """Scores of every latent against every prompt: (B, P); raises on a NaN/Inf score. ``progress``
    as in ``encode_latents``."""
    prompts = check_texts(prompts, "prompt")
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts must be non-empty strings")
    features = model.encode_latents(latents, progress=progress).float()
    cosine = check_finite_result(features @ model.encode_text(prompts).float().T, "scores")
    return Scores(cosine=cosine, logits=model.logit_scale.exp().float() * cosine)


def rank_by_prompt(model: LatentCLIP, latents: torch.Tensor, prompt: str,
                   progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, cosine): batch indices sorted best-first by cosine to ``prompt``, and the cosines (B,)."""
    cosine = score_latents(model, latents, prompt, progress).cosine[:, 0]
    return torch.argsort(cosine, descending=True), cosine
