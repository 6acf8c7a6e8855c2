"""The trainer's objective: what DDP wraps, and the losses by name.

After open_clip's ``loss.py``: ``ClipLoss`` gets rank and world size as arguments and the
objective returns ``*_loss`` terms that the caller sums (``DistillClipLoss(output_dict=True)``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from latent_clip import LatentCLIP

from .models import DecodedTeacher


class ContrastiveForward(nn.Module):
    """What DDP wraps: (normalised image features, normalised text features, logit scale).
    Latent models run their ViT directly on the batch (no per-call contract checks or chunking)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor):
        m = self.model
        image = m.visual(inputs) if isinstance(m, LatentCLIP) else m.encode_image(inputs)
        text = m.encode_text(tokens, normalize=False)
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1), m.logit_scale.exp()


class DistillLoss(nn.Module):
    """``1 - cos(student image features, the frozen teacher's features of the decoded latents)``,
    the batch mean; ``image_features`` (B, D) are L2-normalised, ``latents`` raw."""

    def __init__(self, teacher: DecodedTeacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, image_features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return (1 - (image_features.float() * self.teacher(latents)).sum(-1)).mean()


class FitLoss(nn.Module):
    """Weighted named losses of one micro-batch: ``contrastive_loss`` (open_clip's ClipLoss over the
    whole batch's features, ``batch_image``/``batch_text``) and ``distill_loss`` (this micro-batch's
    share, divided by ``accum``); a term with weight 0 (or no teacher) is left out."""

    def __init__(self, clip_loss: ClipLoss, contrastive_weight: float, distill: DistillLoss | None,
                 distill_weight: float):
        super().__init__()
        self.clip_loss, self.contrastive_weight = clip_loss, contrastive_weight
        self.distill, self.distill_weight = distill, distill_weight

    def forward(self, image: torch.Tensor, inputs: torch.Tensor, batch_image: torch.Tensor,
                batch_text: torch.Tensor, scale: torch.Tensor, accum: int) -> dict[str, torch.Tensor]:
        out = {}
        if self.contrastive_weight:
            out["contrastive_loss"] = self.contrastive_weight * self.clip_loss(batch_image, batch_text, scale)
        if self.distill is not None:
            out["distill_loss"] = self.distill_weight * self.distill(image, inputs) / accum
        return out
