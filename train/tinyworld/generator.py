"""A tiny text-to-latent generator for ReNO to optimise: a rectified-flow velocity net on the
VAE's scaled 8 x 8 latents, sampled with a few Euler steps, so ``generate(noise)`` is a short,
differentiable function of the initial noise (a "few-step" model, like SD-Turbo is one-step).

Text conditioning is a learned embedding of the caption's words (the world's closed vocabulary)
with word positions, flattened through an MLP: order-aware, so "left of" and colour binding are
learnable, but the model is small and briefly trained, so it is imperfect at composition and
ReNO has room to improve it.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .world import COLOURS, NUMBERS, PREFIXES, RELATIONS, SHAPES

MAX_WORDS = 12
VOCAB = ["<pad>", "<unk>", "and"] + sorted({w for p in PREFIXES for w in p.split()} | set(NUMBERS.values())
                                            | set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES}
                                            | {w for r in RELATIONS for w in r.split()})
_INDEX = {w: i for i, w in enumerate(VOCAB)}


def word_ids(captions: list[str]) -> torch.Tensor:
    ids = torch.zeros(len(captions), MAX_WORDS, dtype=torch.long)
    for row, caption in enumerate(captions):
        words = [_INDEX.get(w, 1) for w in caption.lower().replace(",", " ").split()][:MAX_WORDS]
        ids[row, :len(words)] = torch.tensor(words, dtype=torch.long)
    return ids


class TextEmbed(nn.Module):
    def __init__(self, dim: int, word_dim: int = 24):
        super().__init__()
        self.words = nn.Embedding(len(VOCAB), word_dim)
        self.position = nn.Parameter(torch.randn(MAX_WORDS, word_dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(MAX_WORDS * word_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = (self.words(ids) + self.position) * (ids > 0).unsqueeze(-1)
        return self.mlp(x.flatten(1))


class ResBlock(nn.Module):
    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, width), nn.GroupNorm(8, width)
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(cond, 2 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c)[..., None, None].chunk(2, dim=1)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class TinyFlowModel(nn.Module):
    """v(x_t, t, caption) on scaled latents (B, C, S, S); coordinates are input channels so
    positions ("left of", "above") are easy to express."""

    def __init__(self, channels: int = 4, size: int = 8, width: int = 64, blocks: int = 3, cond: int = 128):
        super().__init__()
        self.config = dict(channels=channels, size=size, width=width, blocks=blocks, cond=cond)
        self.text = TextEmbed(cond)
        self.time = nn.Sequential(nn.Linear(16, cond), nn.SiLU(), nn.Linear(cond, cond))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        self.inp = nn.Conv2d(channels + 2, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(width, cond) for _ in range(blocks))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def embed(self, captions: list[str]) -> torch.Tensor:
        return self.text(word_ids(captions).to(self.coords.device))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(8, device=x.device) * -math.log(1000) / 8)
        angles = t.view(-1, 1) * 1000 * freqs
        c = text + self.time(torch.cat([angles.sin(), angles.cos()], dim=-1))
        h = self.inp(torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)

    def sample(self, noise: torch.Tensor, text: torch.Tensor, steps: int = 4) -> torch.Tensor:
        """Euler from noise (t=0) to a scaled latent (t=1); differentiable w.r.t. ``noise``."""
        x = noise
        for k in range(steps):
            t = torch.full((x.shape[0],), k / steps, device=x.device)
            x = x + self.velocity(x, t, text) / steps
        return x


def train_generator(latents: torch.Tensor, captions: list[str], steps: int, batch: int = 64, lr: float = 2e-3,
                    seed: int = 0) -> TinyFlowModel:
    """Rectified flow on (scaled latent, caption) pairs; t ~ logit-normal as in SD3. Returns the frozen model."""
    torch.manual_seed(seed)
    model = TinyFlowModel(channels=latents.shape[1], size=latents.shape[-1]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    ids = word_ids(captions)
    losses, tic = [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(latents), (batch,))
        x1, noise = latents[idx], torch.randn_like(latents[idx])
        t = torch.sigmoid(torch.randn(batch))
        xt = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x1
        loss = F.mse_loss(model.velocity(xt, t, model.text(ids[idx])), x1 - noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"generator step {step + 1}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                  f"{(time.time() - tic) / (step + 1):.3f} s/step")
    return model.eval().requires_grad_(False)
