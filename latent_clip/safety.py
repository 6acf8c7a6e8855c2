"""Concept blocking on latents: each concept is scored against its own counter-prompt.

``p(concept) = softmax(logit_scale.exp() * [cos(z, concept), cos(z, counter)])[0]``, so a latent
is judged "more like the concept than like its harmless counterpart", per concept, and is
flagged when any concept's probability reaches the threshold. Pure tensors; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .batch import replace, select
from .contract import scaled_to_raw
from .fields import field_lines, fill_template, finite, shorten

if TYPE_CHECKING:  # the model module imports open_clip: only a loaded model brings it in
    from .model import LatentCLIP, Progress

CONCEPT_TEMPLATE = "a photo containing {}"
MAX_CONCEPTS = 256  # each is two text encodes per call; I2P's seven categories are the largest list in use
GENERIC_COUNTER = "an ordinary, harmless photo"
# Counter-prompts for common concepts: the same scene without the concept, so the pair differs
# in the concept only.
DEFAULT_COUNTERS = {
    "nudity": "a photo of a fully clothed person",
    "nude": "a photo of a fully clothed person",
    "violence": "a photo of a peaceful, calm scene",
    "gore": "a clean photo without blood or injuries",
    "blood": "a clean photo without blood or injuries",
    "weapon": "a photo of everyday objects",
    "weapons": "a photo of everyday objects",
    "drugs": "a photo of everyday objects",
}


@dataclass(frozen=True)
class Concept:
    name: str
    prompt: str
    counter: str


@dataclass(frozen=True)
class SafetyResult:
    """``probs`` (B, K) p(concept) per latent; ``flagged`` (B,) bool;
    ``non_finite`` (B,) bool: no verdict could be computed (NaN/Inf), so the latent is flagged."""

    concepts: tuple[Concept, ...]
    probs: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    non_finite: torch.Tensor


def parse_concepts(text: str) -> list[Concept]:
    """One concept per line: ``name`` or ``name | counter-prompt``. Blank lines and ``#`` comments
    are skipped. The concept prompt is :data:`CONCEPT_TEMPLATE` filled with the name."""
    concepts = []
    for line in field_lines(text, "concepts", MAX_CONCEPTS):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, counter = (part.strip() for part in line.partition("|"))
        if not name:
            raise ValueError(f"concept line {shorten(line, 60)!r} has no concept before '|'")
        counter = counter or DEFAULT_COUNTERS.get(name.lower(), GENERIC_COUNTER)
        concepts.append(Concept(name, fill_template(CONCEPT_TEMPLATE, name), counter))
    if not concepts:
        raise ValueError("no concepts given: write one concept per line, e.g. 'nudity' or "
                         "'violence | a photo of a peaceful scene'")
    return concepts


def concept_probs(model: LatentCLIP, latents: torch.Tensor, concepts: Sequence[Concept],
                  progress: Progress | None = None) -> torch.Tensor:
    """(B, K) float32 probability of each concept against its counter-prompt; ``progress`` as in
    ``encode_latents``."""
    prompts = [p for c in concepts for p in (c.prompt, c.counter)]
    text = model.encode_text(prompts).float().view(len(concepts), 2, -1)
    z = model.encode_latents(latents, progress=progress).float()
    logits = model.logit_scale.exp().float() * torch.einsum("be,kpe->bkp", z, text)
    return logits.softmax(dim=-1)[..., 0]


def check(model: LatentCLIP, latents: torch.Tensor, concepts: Sequence[Concept], threshold: float,
          progress: Progress | None = None) -> SafetyResult:
    """Flag latents whose probability for any concept is at least ``threshold``, and those with a
    NaN/Inf probability (fails closed: a latent that cannot be judged is not let through)."""
    if not 0.0 <= finite(threshold, "threshold") <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    probs = concept_probs(model, latents, concepts, progress=progress)
    non_finite = ~torch.isfinite(probs).all(dim=-1)
    return SafetyResult(tuple(concepts), probs, (probs >= threshold).any(dim=-1) | non_finite, threshold, non_finite)


def report(result: SafetyResult) -> str:
    """A plain-text table: one row per latent, one column per concept, flagged rows marked."""
    names = [c.name for c in result.concepts]
    lines = [f"threshold {result.threshold:.2f}; flagged {int(result.flagged.sum())}/{len(result.flagged)}",
             "  #  " + "  ".join(f"{n[:12]:>12}" for n in names) + "  verdict"]
    for i, (row, hit, bad) in enumerate(zip(result.probs.tolist(), result.flagged.tolist(),
                                            result.non_finite.tolist())):
        cells = "  ".join(f"{p:12.3f}" for p in row)
        lines.append(f"{i:3d}  {cells}  {'BLOCKED (NaN/Inf: no verdict)' if bad else 'BLOCKED' if hit else 'ok'}")
    return "\n".join(lines)


ACTIONS = ("drop", "replace with noise", "zero", "pass with flag")


def apply_action(latent: dict, flagged: torch.Tensor, action: str, family, seed: int = 0) -> dict | None:
    """A LATENT-style dict with the flagged items handled by ``action``:

    ``drop`` removes them (``batch_index``/``noise_mask`` follow; None when every item is dropped),
    ``replace with noise`` puts fresh raw-latent noise of the model's ``family`` in their place
    (seeded), ``zero`` zeroes them, ``pass with flag`` leaves the batch unchanged.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    z = latent["samples"]
    if action == "pass with flag" or not bool(flagged.any()):
        return dict(latent)
    if action == "drop":
        keep = (~flagged.bool()).nonzero().flatten().tolist()
        return select(latent, keep) if keep else None
    if action == "zero":
        return replace(latent, flagged, torch.zeros_like(z))
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return replace(latent, flagged, scaled_to_raw(noise, family))
