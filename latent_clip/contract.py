"""The latent input contract: what ``encode_latents`` accepts and how it is brought to size.

Latent-CLIP reads **raw** (unscaled) VAE latents, NCHW float, exactly what a ComfyUI LATENT's
``samples`` holds and what ``vae.encode(x).latent_dist.mean`` returns in diffusers.
Latents in diffusers' UNet space (``raw * scaling_factor``, e.g. pipeline ``output_type="latent"``)
must go through :func:`scaled_to_raw` first.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .config import LatentFamily, latent_families

ResizePolicy = Literal["pool", "interpolate"]
RESIZE_POLICIES: tuple[str, ...] = ("pool", "interpolate")


class LatentContractError(ValueError):
    """The latents given do not match what the model reads."""


def scaled_to_raw(latents: torch.Tensor, family: LatentFamily) -> torch.Tensor:
    """diffusers/UNet-space latents -> raw VAE latents: ``z / scaling_factor + shift_factor``."""
    return latents / family.scaling_factor + family.shift_factor


def raw_to_scaled(latents: torch.Tensor, family: LatentFamily) -> torch.Tensor:
    """Raw VAE latents -> diffusers/UNet space: ``(z - shift_factor) * scaling_factor``."""
    return (latents - family.shift_factor) * family.scaling_factor


def _families_with(channels: int) -> str:
    names = [f.description for f in latent_families().values() if f.channels == channels]
    return " or ".join(names)


def check_latents(z: object, family: LatentFamily, min_size: int) -> torch.Tensor:
    """Raise :class:`LatentContractError` unless ``z`` is a finite float (B, C, H, W) batch of
    ``family`` latents with H, W >= ``min_size``; returns ``z`` unchanged."""
    if not isinstance(z, torch.Tensor):
        raise LatentContractError(f"latents must be a torch.Tensor, got {type(z).__name__}")
    c = family.channels
    if z.ndim == 3 and z.shape[0] == c:
        raise LatentContractError(
            f"latents must be batched (B, {c}, H, W); got unbatched {tuple(z.shape)}: use z[None]")
    if z.ndim != 4:
        raise LatentContractError(
            f"latents must be 4-D (B, {c}, H, W); got shape {tuple(z.shape)}"
            + (" (a video latent?)" if z.ndim == 5 else ""))
    if not z.is_floating_point():
        raise LatentContractError(f"latents must be floating point, got {z.dtype}")
    if z.shape[0] == 0:
        raise LatentContractError("latent batch is empty (batch size 0)")
    if z.shape[1] != c:
        if z.shape[-1] == c:
            raise LatentContractError(
                f"latents look channels-last (NHWC) {tuple(z.shape)}; this model reads NCHW "
                f"(B, {c}, H, W): use z.permute(0, 3, 1, 2)")
        guess = _families_with(z.shape[1])
        raise LatentContractError(
            f"this model reads {c}-channel {family.description} latents, got {z.shape[1]} channels"
            + (f" — a {guess} latent?" if guess else ""))
    if min(z.shape[-2:]) < min_size:
        raise LatentContractError(
            f"latent spatial size {tuple(z.shape[-2:])} is smaller than one patch ({min_size})")
    if z.device.type != "meta" and non_finite_items(z):  # meta: shape/FLOP analysis only
        raise LatentContractError(f"latents contain NaN or Inf (batch items {non_finite_items(z)})")
    return z


def non_finite_items(x: torch.Tensor) -> list[int]:
    """Indices along the first dimension of ``x`` (B, ...) whose entries include NaN or Inf."""
    return (~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero().flatten().tolist()


def check_finite_result(x: torch.Tensor, what: str) -> torch.Tensor:
    """Raise ``ValueError`` when a (B, ...) result of finite latents is not finite (NaN weights, or an
    fp16 overflow inside the model); returns ``x`` unchanged."""
    bad = non_finite_items(x)
    if bad:
        raise ValueError(f"Latent-CLIP gave NaN/Inf {what} for batch items {bad} of finite latents: the model's "
                         f"weights are not finite, or it overflows in fp16/bf16 (load it in fp32)")
    return x


def fit_latents(z: torch.Tensor, size: int, patch: int, policy: ResizePolicy) -> torch.Tensor:
    """Bring (B, C, H, W) latents to what the ViT can tokenise.

    ``pool``: area-average (or bilinearly upsample) to the trained ``size`` x ``size``; the
    positional embedding is used as trained. ``interpolate``: keep the latent as it is (cropping
    to a multiple of ``patch``) and let the model resample its positional embedding.
    """
    h, w = z.shape[-2:]
    if (h, w) == (size, size):
        return z
    if policy == "pool":
        if h >= size and w >= size:
            return F.adaptive_avg_pool2d(z, size)
        return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if policy == "interpolate":
        hc, wc = h - h % patch, w - w % patch
        top, left = (h - hc) // 2, (w - wc) // 2
        return z[..., top:top + hc, left:left + wc]
    raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
