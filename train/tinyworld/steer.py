"""Claims 2 and 3 in the tiny world: ReNO with a Latent-CLIP or a pixel-CLIP reward, and
latent guidance away from a forbidden concept. Built on ``latent_clip.reno.optimize_noise`` and
the loss functions of ``latent_clip.rewards``; the rewards here take one prompt *per sample*
(the library's take one prompt for the batch), so a whole prompt set runs as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latent_clip.reno import RenoResult, optimize_noise
from latent_clip.rewards import CLIP_MEAN, CLIP_STD, clip_preprocess, clip_score_loss, concept_loss, weighted_sum
from latent_clip.safety import Concept

from .clips import text_features
from .judge import contains_colour, judge_batch, to_uint8
from .vae import SCALING_FACTOR, decode
from .world import COLOURS, SHAPES, Spec


@dataclass
class Generator:
    """``generate(noise) -> raw latents`` for a batch of prompts (the flow model, few Euler steps)."""

    model: torch.nn.Module
    prompts: list[str]
    steps: int = 4

    def __post_init__(self):
        with torch.no_grad():
            self.text = self.model.embed(self.prompts)

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        return self.model.sample(noise, self.text, self.steps) / SCALING_FACTOR

    def noise(self, seed: int) -> torch.Tensor:
        c, s = self.model.config["channels"], self.model.config["size"]
        return torch.randn(len(self.prompts), c, s, s, generator=torch.Generator().manual_seed(seed))


def latent_reward(model, prompts: list[str]):
    """Latent-CLIP prompt alignment, no decode: ReNO's CLIPScore loss per sample."""
    text = text_features(model, prompts)
    return lambda raw: clip_score_loss(model.encode_latents(raw, normalize=True), text, model.logit_scale)


def pixel_reward(clip_model, vae, prompts: list[str]):
    """Decode with the tiny VAE, then the pixel CLIP: ReNO's CLIPScore loss per sample."""
    text = text_features(clip_model, prompts)
    size = clip_model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size

    def loss(raw: torch.Tensor) -> torch.Tensor:
        images = clip_preprocess(decode(vae, raw), size, CLIP_MEAN, CLIP_STD)
        features = torch.nn.functional.normalize(clip_model.encode_image(images), dim=-1)
        return clip_score_loss(features, text, clip_model.logit_scale)
    return loss


def avoid_concepts(colour: str) -> list[Concept]:
    """"``colour``" against every other colour, per shape: the forbidden concept and its
    counter-prompts in the world's own caption language."""
    return [Concept(colour, f"a photo of a {colour} {s}", f"a photo of a {c} {s}")
            for s in SHAPES for c in COLOURS if c != colour]


def avoid_reward(model, concepts: list[Concept]):
    """``latent_clip.rewards.concept_loss`` on raw latents, no decode."""
    concept = text_features(model, [c.prompt for c in concepts])
    neutral = text_features(model, [c.counter for c in concepts])
    return lambda raw: concept_loss(model.encode_latents(raw, normalize=True), concept, neutral, model.logit_scale)


def run_reno(generate: Generator, reward, seed: int, iterations: int, lr: float) -> RenoResult:
    return optimize_noise(generate, reward, generate.noise(seed), iterations=iterations, lr=lr)


@torch.no_grad()
def judge_latents(vae, raw: torch.Tensor, specs: list[Spec]):
    images = to_uint8(decode(vae, raw))
    return judge_batch(images, specs), images


def forbidden_rate(images, colour: str) -> float:
    return float(sum(contains_colour(img, colour) for img in images) / len(images))


def guided(generate: Generator, latent_clip_model, colour: str, seed: int, iterations: int, lr: float,
           align_weight: float = 0.05) -> RenoResult:
    """Noise optimisation on "avoid ``colour``" + a little prompt alignment (to stay on the
    prompt), both Latent-CLIP losses on latents; nothing is decoded."""
    reward = weighted_sum({"avoid": avoid_reward(latent_clip_model, avoid_concepts(colour)),
                           "align": latent_reward(latent_clip_model, generate.prompts)},
                          {"avoid": 1.0, "align": align_weight})
    return run_reno(generate, reward, seed, iterations, lr)
