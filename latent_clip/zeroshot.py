"""Zero-shot classification of latents: class names x templates ensembles, as open_clip's
``build_zero_shot_classifier`` builds them, in batches with progress and interrupt (cost linear in the
number of labels)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .contract import check_finite_result
from .fields import MAX_LABELS, MAX_TEMPLATES, check_template, check_texts, field_lines, fill_template, shorten

if TYPE_CHECKING:  # the model module imports open_clip: only a loaded model brings it in
    from .model import LatentCLIP, Progress

LABELS_PER_BATCH = 256  # texts per text-tower call: 16 (open_clip's default) spent a third of the time in overhead


def parse_labels(text: str) -> list[str]:
    """One label per line; blank lines and surrounding spaces dropped; bounded (:mod:`latent_clip.fields`)."""
    return field_lines(text, "labels", MAX_LABELS)


def parse_templates(text: str) -> list[str]:
    """One template per line, each with ``{}`` where the label goes (:func:`~latent_clip.fields.check_template`)."""
    return [check_template(t) for t in field_lines(text, "templates", MAX_TEMPLATES)]


def build_classifier(model: LatentCLIP, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                     progress: Progress | None = None) -> torch.Tensor:
    """(embed_dim, K) unit-norm class embeddings, each the mean over ``templates`` (each ``{}`` replaced by
    the label; no other braces); raises on an empty or repeated label or on text over the bounds.
    ``progress(done, total)`` in labels after each batch; raising from it stops the call."""
    classnames, templates = list(classnames), list(templates)
    if not classnames:
        raise ValueError("no class labels given")
    if len(classnames) > MAX_LABELS or not 0 < len(templates) <= MAX_TEMPLATES:
        raise ValueError(f"{len(classnames):,} labels and {len(templates):,} templates: expected at most "
                         f"{MAX_LABELS:,} labels and 1 to {MAX_TEMPLATES} templates")
    seen: set[str] = set()
    repeated = sorted({c for c in classnames if c in seen or seen.add(c)})
    if repeated:
        raise ValueError(f"labels must differ, but {shorten(repeated[:5], 120)} appear more than once: a repeated "
                         f"label splits its probability between the copies")
    check_texts(classnames, "label")
    check_texts([check_template(t) for t in templates], "template")
    batch = max(1, LABELS_PER_BATCH // len(templates))
    parts = []
    with torch.no_grad():
        for start in range(0, len(classnames), batch):
            names = classnames[start:start + batch]
            texts = [fill_template(t, c) for c in names for t in templates]
            features = model.encode_text(texts, normalize=True).view(len(names), len(templates), -1)
            parts.append(F.normalize(features.mean(dim=1), dim=-1))
            if progress is not None:
                progress(start + len(names), len(classnames))
    return torch.cat(parts).T


def classify(model: LatentCLIP, latents: torch.Tensor, classifier: torch.Tensor,
             progress: Progress | None = None) -> torch.Tensor:
    """Class probabilities (B, K), float32: softmax of ``logit_scale.exp() * cos``; raises on NaN/Inf.
    ``progress`` as in ``encode_latents``."""
    features = model.encode_latents(latents, progress=progress).float()
    logits = model.logit_scale.exp().float() * features @ classifier.float()
    return check_finite_result(logits.softmax(dim=-1), "class probabilities")


def open_clip_classifier(model: nn.Module, classnames: Sequence[str], templates: Sequence, device) -> torch.Tensor:
    """open_clip's zero-shot classifier (``build_zero_shot_classifier``) for any model with open_clip's
    ``encode_text`` (a pixel CLIP, or a Latent-CLIP for side-by-side runs): (embed_dim, classes) text weights,
    each the mean of a class's normalised template embeddings, renormalised. ``templates`` are open_clip's
    (strings or callables, e.g. ``OPENAI_IMAGENET_TEMPLATES``); names and texts within
    :func:`~latent_clip.fields.check_texts`'s bounds."""
    import open_clip
    check_texts(classnames, "class name")

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        return open_clip.tokenize(check_texts(texts, "text"), context_length=model.context_length)

    return open_clip.build_zero_shot_classifier(model, tokenize, classnames, templates, num_classes_per_batch=10,
                                                device=device)
