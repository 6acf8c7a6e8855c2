"""Zero-shot classification of latents: class names x templates ensembles, built by open_clip's
``build_zero_shot_classifier``."""
from __future__ import annotations

from typing import Sequence

import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from .contract import check_finite_result
from .model import LatentCLIP, Progress


def parse_labels(text: str) -> list[str]:
    """One label per line; blank lines and surrounding spaces dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_classifier(model: LatentCLIP, classnames: Sequence[str],
                     templates: Sequence[str] = ("a photo of a {}.",)) -> torch.Tensor:
    """(embed_dim, K) unit-norm class embeddings, each the mean over ``templates`` ("...{}...");
    raises on an empty or repeated label."""
    if not classnames:
        raise ValueError("no class labels given")
    repeated = sorted({c for c in classnames if list(classnames).count(c) > 1})
    if repeated:
        raise ValueError(f"labels must differ, but {repeated} appear more than once: a repeated label splits its "
                         f"probability between the copies")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"templates must each contain '{{}}' for the label; got {list(templates)}")
    with torch.no_grad():
        return build_zero_shot_classifier(model, model.tokenize, list(classnames), list(templates),
                                          num_classes_per_batch=16, device=model.device)


def classify(model: LatentCLIP, latents: torch.Tensor, classifier: torch.Tensor,
             progress: Progress | None = None) -> torch.Tensor:
    """Class probabilities (B, K), float32: softmax of ``logit_scale.exp() * cos``; raises on NaN/Inf.
    ``progress`` as in ``encode_latents``."""
    features = model.encode_latents(latents, progress=progress).float()
    logits = model.logit_scale.exp().float() * features @ classifier.float()
    return check_finite_result(logits.softmax(dim=-1), "class probabilities")
