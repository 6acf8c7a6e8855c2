"""Latent verifiers during sampling: read every candidate's predicted clean latent at a checkpoint step, keep
the best ``keep`` of N by a prompt score (:func:`prune`) or stop the ones a safety check flags (:func:`stop`),
and finish sampling only the survivors (:func:`sample_verified`). Pure tensors; no ComfyUI.

Step rule: a sampler of S steps goes from ``sigmas[0]`` to ``sigmas[S]``. A checkpoint "at step k"
(1 <= k < S) is read after the first k steps, at ``sigmas[k]``, from the clean-latent prediction the k-th step
made: ComfyUI's ``denoised`` in the sampler callback of step index k-1, ``x + (1 - t) v`` for a rectified flow.
Counting one model evaluation per candidate per step (Euler, DDIM, DPM++ 2M; Heun-like samplers make more),
pruning N candidates to m at step k costs ``N*k + m*(S-k)`` evaluations instead of ``N*S``
(:func:`evaluations`); :func:`step_at_sigma` turns a sigma into this step rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .config import LatentFamily
from .safety import ACTIONS, Concept, apply_action, check
from .score import score_latents

if TYPE_CHECKING:  # the model module imports open_clip: only a loaded model brings it in
    from .model import LatentCLIP

# run(x, sigmas, rows) -> (x at sigmas[-1], the last step's predicted clean latent): sample rows ``rows`` of
# the N candidates (their conditioning, masks...) over ``sigmas``; raw or model-space latents, as ``verify`` reads.
Run = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# verify(predicted (N, ...)) -> (scores (N,) or (N, K) float32, kept indices (m,) int64 ascending)
Verifier = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def prune(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending, int64) of the ``keep`` highest of the (N,) ``scores``; ties go to the lower index,
    and a NaN/Inf score ranks below every finite one (a candidate that cannot be scored is pruned first)."""
    if scores.dim() != 1:
        raise ValueError(f"prune reads one score per candidate, shape (N,); got {tuple(scores.shape)}")
    if not 1 <= keep <= len(scores):
        raise ValueError(f"keep must be between 1 and the {len(scores)} candidates, got {keep}")
    ranked = torch.where(torch.isfinite(scores), scores.float(), torch.tensor(-torch.inf, device=scores.device))
    order = torch.sort(ranked, descending=True, stable=True).indices
    return torch.sort(order[:keep]).values


def stop(flagged: torch.Tensor) -> torch.Tensor:
    """Indices (ascending, int64) of the candidates not ``flagged`` (N,) bool: the ones sampling goes on with."""
    if flagged.dim() != 1 or flagged.dtype != torch.bool:
        raise ValueError(f"stop reads one bool flag per candidate, shape (N,); got {flagged.dtype} "
                         f"{tuple(flagged.shape)}")
    return torch.arange(len(flagged), device=flagged.device)[~flagged]


def stopped(kept: torch.Tensor, candidates: int) -> torch.Tensor:
    """(N,) bool: True for the candidates not among ``kept`` (the ones a checkpoint stopped or pruned)."""
    return ~torch.isin(torch.arange(candidates, device=kept.device), kept)


def step_at_sigma(sigmas: torch.Tensor, sigma: float) -> int:
    """The first step k >= 1 whose ``sigmas[k]`` is at or below ``sigma`` (the checkpoint a sigma names),
    kept within 1..S-1 so that something is left to sample after it."""
    steps = len(sigmas) - 1
    if steps < 2:
        raise ValueError(f"a checkpoint needs at least 2 sampling steps, got {steps}")
    reached = (sigmas[1:steps] <= sigma).nonzero()
    return int(reached[0]) + 1 if len(reached) else steps - 1


def evaluations(candidates: int, steps: int, at_step: int, survivors: int) -> int:
    """Model evaluations of one checkpointed run, one per candidate per step: ``N*k + m*(S-k)``."""
    return candidates * at_step + survivors * (steps - at_step)


@dataclass(frozen=True)
class Verified:
    """``latents`` (m, ...) the survivors' final latents in ``kept`` order; ``kept`` (m,) their indices among
    the N candidates; ``scores`` the verifier's (N,) or (N, K) scores at the checkpoint; ``predicted`` (N, ...)
    the clean-latent predictions it read; ``at_step`` k; ``evaluations`` as :func:`evaluations` counts them."""

    latents: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor
    predicted: torch.Tensor
    at_step: int
    evaluations: int


def sample_verified(run: Run, x: torch.Tensor, sigmas: torch.Tensor, at_step: int, verify: Verifier) -> Verified:
    """Sample all N candidates ``x`` (the noised start at ``sigmas[0]``) for ``at_step`` steps, let ``verify``
    choose from their predicted clean latents, and sample only the chosen ones over the remaining steps."""
    steps, candidates = len(sigmas) - 1, len(x)
    if not 1 <= at_step < steps:
        raise ValueError(f"the checkpoint step must be between 1 and {steps - 1} for {steps} sampling steps, "
                         f"got {at_step}")
    every = torch.arange(candidates, device=x.device)
    x_mid, predicted = run(x, sigmas[:at_step + 1], every)
    scores, kept = verify(predicted)
    kept = kept.to(x.device)
    latents = run(x_mid[kept], sigmas[at_step:], kept)[0] if len(kept) else x_mid[:0]
    return Verified(latents, kept, scores, predicted, at_step, evaluations(candidates, steps, at_step, len(kept)))


def by_prompt(model: LatentCLIP, prompt: str, keep: int) -> Verifier:
    """Keep the ``keep`` predicted raw latents closest to ``prompt`` (cosine, (N,))."""
    def verify(predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = score_latents(model, predicted, prompt).cosine[:, 0]
        return cosine, prune(cosine, keep)
    return verify


def by_safety(model: LatentCLIP, concepts: Sequence[Concept], threshold: float) -> Verifier:
    """Stop the predicted raw latents that :func:`latent_clip.safety.check` flags (probabilities (N, K)); a
    NaN/Inf latent is refused as the Safety Filter refuses it (``LatentContractError``), never let through."""
    def verify(predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = check(model, predicted, concepts, threshold)
        return result.probs, stop(result.flagged)
    return verify


FILLING_ACTIONS = ("zero", "replace with noise")  # safety.ACTIONS that fill the stopped candidates' slots


def stop_output(finished: torch.Tensor, kept: torch.Tensor, candidates: int, action: str, family: LatentFamily,
                seed: int = 0) -> torch.Tensor:
    """A safety stop's output under ``action`` (:data:`latent_clip.safety.ACTIONS`), raw latents, from
    ``finished`` (m, ...) the final raw latents of the ``kept`` candidates: ``drop`` and ``pass with flag``
    (where every candidate went on) give ``finished`` itself; ``zero`` and ``replace with noise`` give all N,
    the stopped candidates' slots filled as the Safety Filter fills them (zeros; seeded noise of ``family``)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    if action not in FILLING_ACTIONS:
        return finished
    full = finished.new_zeros(candidates, *finished.shape[1:])
    full[kept] = finished
    return apply_action({"samples": full}, stopped(kept, candidates), action, family, seed)["samples"]
