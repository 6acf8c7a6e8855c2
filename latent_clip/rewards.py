"""Rewards for noise optimisation and guidance: plain functions of tensors.

A reward here is a *loss*: a callable ``raw_latents (B, C, H, W) -> (B,)`` that is lower when
the latent is better, differentiable w.r.t. the latents. Models are arguments (never
downloaded here), device and dtype come from the inputs, weights are a dict
(:func:`weighted_sum`); the noise-norm regulariser, ReNO's prior, lives beside ReNO
(:func:`latent_clip.reno.norm_regulariser`). A prompt is one string for the whole batch or a
sequence of strings, one per sample (:data:`Prompts`).

Losses follow ReNO (arXiv 2406.04312, ``rewards/*.py``): CLIPScore is
``100 - exp(logit_scale) * cos``, PickScore ``30 - exp(logit_scale) * cos`` (the benchmarks' transformers
model: ``train/benchmarks/pixel_rewards.py``), HPSv2 ``1 - cos``, so weights are comparable with ReNO's
(``w = 0.01`` CLIPScore, ``0.05`` PickScore, ``5.0`` HPS).
ReNO's objective for one CLIP reward is :data:`CLIP_SCORE_WEIGHT` times its loss plus
``latent_clip.reno.norm_regulariser`` at ``RENO.reg_weight``, clipped after summing: the weight
is not a free scale, it sets how hard the noise norm is held against the reward.

Pixel rewards are :data:`ImageRewardFn` (images in [0, 1] -> (B,)); :func:`on_decoded` turns several
of them into latent rewards that share one VAE decode per latents tensor.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F

from .fields import check_texts, finite
from .pixel_clip import clip_normalise, pixel_preprocess
from .safety import Concept, parse_concepts

RewardFn = Callable[[torch.Tensor], torch.Tensor]
ImageRewardFn = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] (B, 3, H, W) -> (B,) loss
Prompts = Union[str, Sequence[str]]  # one prompt for the batch, or one per sample (text features (1 or B, D))

# ReNO's CLIPScore weight (ExplainableML/ReNO arguments.py, --clip_weighting; the authors' Latent-CLIP demo
# uses it too). concept_loss is a logit_scale * cos difference like CLIPScore, so the same weight pushes
# as hard per unit of cosine.
CLIP_SCORE_WEIGHT = 0.01
# step_away's strength per guided sampling step, in units of the latent's RMS: the safety guider's and I2P's default
GUIDANCE_STRENGTH = 0.05

def clip_score_loss(features: torch.Tensor, text_features: torch.Tensor,
                    logit_scale: torch.Tensor, offset: float = 100.0) -> torch.Tensor:
    """ReNO's CLIPScore loss ``offset - exp(logit_scale) * cos``, per sample (``offset`` 100 for
    CLIPScore, 30 for PickScore).

    ``features`` (B, D) and ``text_features`` (1 or B, D) are L2-normalised; ``logit_scale`` is
    the log scale (open_clip's and transformers' parameter)."""
    cos = (features * text_features.to(features.dtype)).sum(-1)
    return offset - logit_scale.exp().to(cos.dtype) * cos


def hps_loss(features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """ReNO's HPSv2 loss ``1 - cos``, per sample (no logit scale); shapes as :func:`clip_score_loss`."""
    return 1 - (features * text_features.to(features.dtype)).sum(-1)


def concept_loss(features: torch.Tensor, concept_features: torch.Tensor, neutral_features: torch.Tensor,
                 logit_scale: torch.Tensor) -> torch.Tensor:
    """"Avoid these concepts": ``sum_k -log p(neutral_k)``, per sample.

    For each concept k, ``p`` is the softmax of ``exp(logit_scale) * cos`` over the pair
    (concept_k, counter-prompt_k), as :func:`latent_clip.safety.concept_probs` computes it. The loss is about
    ``p(concept)`` when small and saturates at 0 once the latent is clear of every concept, so it
    does not push further than needed. ``concept_features``/``neutral_features``: (K, D)."""
    scale = logit_scale.exp().to(features.dtype)
    s_concept = scale * features @ concept_features.to(features.dtype).T
    s_neutral = scale * features @ neutral_features.to(features.dtype).T
    return F.softplus(s_concept - s_neutral).sum(-1)


def prompt_list(prompt: Prompts) -> list[str]:
    """The prompt(s) as a list (one for the batch, or one per sample), within the text bounds
    (:func:`latent_clip.fields.check_texts`)."""
    return check_texts(prompt, "prompt")


def _text_features(model, texts: Sequence[str]) -> torch.Tensor:
    # outside inference mode: the features must be usable in a later autograd graph
    with torch.inference_mode(False), torch.no_grad():
        return model.encode_text(list(texts), normalize=True).detach()


def latent_alignment(model, prompt: Prompts) -> RewardFn:
    """Latent-CLIP prompt alignment (ReNO's CLIPScore loss on raw latents, no decode).

    ``model`` is a :class:`~latent_clip.LatentCLIP`; the text is encoded once, here."""
    text = _text_features(model, prompt_list(prompt))
    return lambda latents: clip_score_loss(model.encode_latents(latents), text, model.logit_scale)


def latent_avoid(model, concepts: "str | Sequence[Concept]") -> RewardFn:
    """Latent-CLIP "avoid these concepts" (:func:`concept_loss`) on raw latents, no decode.

    ``concepts`` as in :mod:`latent_clip.safety` (the filter's format): text with one
    ``name`` or ``name | counter-prompt`` per line, or parsed :class:`~latent_clip.safety.Concept`
    objects. Each concept is scored against its own counter-prompt, as the filter does."""
    if isinstance(concepts, str):
        concepts = parse_concepts(concepts)
    if not concepts:
        raise ValueError("latent_avoid needs at least one concept")
    concept = _text_features(model, [c.prompt for c in concepts])
    neutral = _text_features(model, [c.counter for c in concepts])
    return lambda latents: concept_loss(model.encode_latents(latents), concept, neutral, model.logit_scale)


def _open_clip_scorer(clip_model, tokenizer, prompt: Prompts):
    """(images in [0, 1] -> normalised image features (B, D), normalised text features (1 or B, D))."""
    size, mean, std = pixel_preprocess(clip_model)
    param = next(clip_model.parameters())
    with torch.inference_mode(False), torch.no_grad():
        tokens = tokenizer(prompt_list(prompt)).to(param.device)
        text = F.normalize(clip_model.encode_text(tokens).float(), dim=-1).detach()

    def image_features(images: torch.Tensor) -> torch.Tensor:
        x = clip_normalise(images, size, mean, std).to(device=param.device, dtype=param.dtype)
        return F.normalize(clip_model.encode_image(x).float(), dim=-1)

    return image_features, text


def clip_image_reward(clip_model, tokenizer, prompt: Prompts) -> ImageRewardFn:
    """An open_clip model's CLIPScore loss (:func:`clip_score_loss`, offset 100) on images in [0, 1],
    preprocessed with the model's size and mean/std; the prompt is encoded once, here."""
    features, text = _open_clip_scorer(clip_model, tokenizer, prompt)
    return lambda images: clip_score_loss(features(images), text, clip_model.logit_scale.float())


def hps_image_reward(clip_model, tokenizer, prompt: Prompts) -> ImageRewardFn:
    """HPSv2 (an open_clip model with HPS weights): :func:`hps_loss` ``1 - cos`` on images in [0, 1]."""
    features, text = _open_clip_scorer(clip_model, tokenizer, prompt)
    return lambda images: hps_loss(features(images), text)


def on_decoded(rewards: Mapping[str, ImageRewardFn], decode: Callable[[torch.Tensor], torch.Tensor]
               ) -> dict[str, RewardFn]:
    """Pixel rewards as latent rewards (raw latents -> (B,), on the latents' device) sharing one decode.

    ``decode`` (raw latents -> images in [-1, 1]) runs once per latents tensor: its output, mapped
    to ``(x / 2 + 0.5).clamp(0, 1)``, is kept for the last tensor seen (same object, same in-place
    version, same grad mode), so the terms of one :func:`weighted_sum` call decode once and
    backpropagate through one graph."""
    last: dict = {}

    def images(latents: torch.Tensor) -> torch.Tensor:
        key = (latents._version, torch.is_grad_enabled())
        if last.get("latents") is not latents or last.get("key") != key:
            last.clear()  # drop the previous graph before building the next one
            last.update(latents=latents, key=key, images=(decode(latents).float() / 2 + 0.5).clamp(0, 1))
        return last["images"]

    def term(fn: ImageRewardFn) -> RewardFn:
        return lambda latents: fn(images(latents)).to(latents.device)

    return {name: term(fn) for name, fn in rewards.items()}


def pixel_alignment(clip_model, tokenizer, prompt: Prompts, decode: Callable[[torch.Tensor], torch.Tensor]) -> RewardFn:
    """The pixel path, for comparisons: ``decode`` (raw latents -> images in [-1, 1]), then an
    open_clip model's image tower and ReNO's CLIPScore loss. Costs a VAE decode forward and
    backward per call (on CPU about 2.4x an SD-Turbo UNet step: ``bench/bench_reno.py``)."""
    return on_decoded({"clip": clip_image_reward(clip_model, tokenizer, prompt)}, decode)["clip"]


def weighted_sum(rewards: Mapping[str, RewardFn], weights: Mapping[str, float]) -> RewardFn:
    """``sum_name weights[name] * rewards[name](latents)``, per sample, in fp32.

    Names in ``rewards`` without a weight, or with weight 0, are skipped (never evaluated)."""
    unknown = set(weights) - set(rewards)
    for name, weight in weights.items():
        finite(weight, f"weight of reward {name!r}")
    if unknown:
        raise KeyError(f"weights for unknown rewards: {sorted(unknown)}")
    active = {n: fn for n, fn in rewards.items() if weights.get(n, 0.0)}
    if not active:
        raise ValueError("no reward has a non-zero weight")
    return lambda latents: sum(weights[n] * fn(latents).float().to(latents.device) for n, fn in active.items())


def step_away(latents: torch.Tensor, loss_fn: RewardFn, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One guidance step on clean latents: ``z - strength * p * g / rms(g)`` per sample, where
    ``g`` is the gradient of ``loss_fn`` at ``z`` and ``p = 1 - exp(-loss)`` (for
    :func:`concept_loss`, the probability of any concept). ``strength`` is thus in units of the
    latent's RMS per step, scaled down as the latent clears the concepts. Returns
    ``(new latents, loss)``; ``loss_fn`` may read a transformed ``z`` (e.g. raw from model space)."""
    with torch.inference_mode(False), torch.enable_grad():
        z = latents.detach().clone().requires_grad_(True)
        loss = loss_fn(z)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    dims = tuple(range(1, grad.ndim))
    rms = grad.float().square().mean(dims, keepdim=True).sqrt().clamp_min(1e-12)
    p = (1 - torch.exp(-loss.detach().float())).view(-1, *([1] * len(dims)))
    step = (strength * p * grad.float() / rms).to(latents.dtype)
    return latents - step, loss.detach()
