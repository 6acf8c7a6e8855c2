"""Claims 2 and 3 in the tiny world: ReNO with a Latent-CLIP or a pixel-CLIP reward, and
latent guidance away from a forbidden concept. Built on ``latent_clip.reno.optimize_noise`` and
the rewards of ``latent_clip.rewards``, given one prompt per sample, so a whole prompt set runs as
one batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import open_clip
import torch

from latent_clip.reno import RenoResult, optimize_noise
from latent_clip.rewards import latent_alignment, latent_avoid, pixel_alignment, weighted_sum
from latent_clip.safety import Concept

from .judge import detect, judge_batch, to_uint8
from .vae import SCALING_FACTOR
from .world import COLOURS, SHAPES, Spec


@dataclass
class PromptedFlow:
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


def pixel_reward(clip_model, vae, prompts: list[str]):
    """Decode with the tiny VAE, then the pixel CLIP: ReNO's CLIPScore loss per sample."""
    tokenizer = partial(open_clip.tokenize, context_length=clip_model.context_length)
    return pixel_alignment(clip_model, tokenizer, prompts, lambda raw: vae.decode(raw).sample)


def avoid_concepts(colour: str) -> list[Concept]:
    """"``colour``" against every other colour, per shape: the forbidden concept and its
    counter-prompts in the world's own caption language."""
    return [Concept(colour, f"a photo of a {colour} {s}", f"a photo of a {c} {s}")
            for s in SHAPES for c in COLOURS if c != colour]


@torch.no_grad()
def judge_latents(vae, raw: torch.Tensor, specs: list[Spec]):
    images = to_uint8(vae.decode(raw).sample)
    return judge_batch(images, specs), images


def forbidden_rate(images, colour: str) -> float:
    """The share of ``images`` in which an object of ``colour`` is detected."""
    return float(sum(any(d.colour == colour for d in detect(img)) for img in images) / len(images))


def guided(generate: PromptedFlow, latent_clip_model, colour: str, seed: int, iterations: int, lr: float,
           align_weight: float = 0.05) -> RenoResult:
    """Noise optimisation on "avoid ``colour``" + a little prompt alignment (to stay on the
    prompt), both Latent-CLIP losses on latents; nothing is decoded."""
    reward = weighted_sum({"avoid": latent_avoid(latent_clip_model, avoid_concepts(colour)),
                           "align": latent_alignment(latent_clip_model, generate.prompts)},
                          {"avoid": 1.0, "align": align_weight})
    return optimize_noise(generate, reward, generate.noise(seed), iterations=iterations, lr=lr)
