"""The tiny world's KL-VAE: a diffusers ``AutoencoderKL`` (4 latent channels, factor 8), trained
on random 8-px-aligned crops of world images (it is fully convolutional: no mid-block
attention), then rescaled so raw latents have std ``1 / SCALING_FACTOR`` exactly.

The rescale is an exact reparametrisation (posterior mean and std times ``a``, the decoder's
input divided by ``a``), so the ``tinyworld`` latent family's scaling factor holds for every
retrained VAE, not only the committed one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from latent_clip import get_latent_family

from .world import SIZE, images_tensor, make_samples

SCALING_FACTOR = get_latent_family("tinyworld").scaling_factor  # latent_families.json: raw latents have std 4
ARCH = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 64), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=SIZE, mid_block_add_attention=False,
            scaling_factor=SCALING_FACTOR)


def random_crops(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One ``size`` crop per image at offsets on the latent grid (multiples of 8)."""
    if size >= x.shape[-1]:
        return x
    cells = (x.shape[-1] - size) // 8 + 1
    ij = torch.randint(0, cells, (x.shape[0], 2), generator=generator) * 8
    return torch.stack([img[:, i:i + size, j:j + size] for img, (i, j) in zip(x, ij.tolist())])


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights: ``1 + weight`` on coloured (object) pixels, 1 on the grey
    background, so the few object pixels are not drowned by the background."""
    chroma = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)
    return 1 + weight * (chroma > 0.3).float()


def train_vae(steps: int, batch: int = 16, crop: int = 64, lr: float = 2e-3, kl_weight: float = 1e-6,
              object_weight: float = 8.0, seed: int = 0):
    """Train from scratch on world seed ``seed``; returns the rescaled VAE (eval mode, frozen)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(**ARCH).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses, tic = [], time.time()
    for step in range(steps):
        lr_now = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr_now
        x = random_crops(images_tensor(make_samples(seed, batch, start=step * batch)), crop, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        w = object_weights(x, object_weight)
        err = (y - x).abs()
        loss = (w * (err + err.square())).mean() + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            print(f"vae step {step + 1}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"{(time.time() - tic) / (step + 1):.2f} s/step")
    vae.eval().requires_grad_(False)
    rescale(vae, encode(vae, images_tensor(make_samples(seed + 1, 256))).std().item())
    return vae


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images in [-1, 1] -> raw latents (posterior mean)."""
    return torch.cat([vae.encode(x).latent_dist.mean for x in images.split(batch)])


@torch.no_grad()
def rescale(vae, std: float) -> None:
    """Make raw latents ``1 / SCALING_FACTOR`` in std (exact: posterior and decoder input rescaled)."""
    a = (1 / SCALING_FACTOR) / std
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= a
    vae.quant_conv.bias[:c] *= a
    vae.quant_conv.bias[c:] += 2 * math.log(a)
    vae.post_quant_conv.weight /= a


def save(vae, path: str | Path) -> None:
    vae.to(memory_format=torch.contiguous_format).save_pretrained(str(path), safe_serialization=True)


def load(path: str | Path):
    from diffusers import AutoencoderKL
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
