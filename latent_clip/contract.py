"""The latent input contract: what ``encode_latents`` accepts and how it is brought to size.

Latent-CLIP reads **raw** (unscaled) VAE latents, NCHW float, exactly what a ComfyUI LATENT's
``samples`` holds and what ``vae.encode(x).latent_dist.mean`` returns in diffusers.
Latents in diffusers' UNet space (``raw * scaling_factor``, e.g. pipeline ``output_type="latent"``)
must go through :func:`scaled_to_raw` first.

Pairing rule: a Latent-CLIP only reads the latents of the VAE it was trained on. A generator's
latents are known by their channel count and VAE scaling/shift (:func:`family_of`);
:func:`check_family` is the one place that decides whether a Latent-CLIP and a generator belong
together.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Literal, get_args

import torch
import torch.nn.functional as F

from .config import LatentFamily, VisionConfig, latent_families

ResizePolicy = Literal["pool", "interpolate"]
_FINITE_BY_CONSTRUCTION = ContextVar("finite_by_construction", default=False)


class LatentContractError(ValueError):
    """The latents given do not match what the model reads."""


def scaled_to_raw(latents: torch.Tensor, family: LatentFamily) -> torch.Tensor:
    """diffusers/UNet-space latents -> raw VAE latents: ``z / scaling_factor + shift_factor``."""
    return latents / family.scaling_factor + family.shift_factor


def raw_to_scaled(latents: torch.Tensor, family: LatentFamily) -> torch.Tensor:
    """Raw VAE latents -> diffusers/UNet space: ``(z - shift_factor) * scaling_factor``."""
    return (latents - family.shift_factor) * family.scaling_factor


class LatentFamilyMismatch(LatentContractError):
    """A Latent-CLIP paired with a generator whose latents come from another VAE."""


def family_of(channels: int, scaling_factor: float, shift_factor: float | None = 0.0) -> LatentFamily | None:
    """The registered family whose latents have ``channels`` and this VAE ``scaling_factor`` /
    ``shift_factor`` (a diffusers VAE config's, a ComfyUI latent format's), else None."""
    for family in latent_families().values():
        if (family.channels == channels and math.isclose(family.scaling_factor, scaling_factor, rel_tol=1e-4)
                and math.isclose(family.shift_factor, shift_factor or 0.0, rel_tol=1e-4, abs_tol=1e-6)):
            return family
    return None


def describe_latents(channels: int, scaling_factor: float, shift_factor: float | None = 0.0) -> str:
    """What a generator makes, for messages: "SD 1.x / 2.x / SD-Turbo VAE latents ('sd15')", or the
    numbers of an unregistered VAE."""
    family = family_of(channels, scaling_factor, shift_factor)
    if family is not None:
        return f"{family.description} latents ('{family.name}')"
    return (f"latents of an unregistered VAE ({channels} channels, scaling {scaling_factor:g}, "
            f"shift {shift_factor or 0.0:g})")


def channel_error(expected: str, got: int) -> LatentContractError:
    """``"<expected>, got N channels — a <family> latent?"``: the one wording of a channel mismatch."""
    guess = " or ".join(f.description for f in latent_families().values() if f.channels == got)
    return LatentContractError(f"{expected}, got {got} channels" + (f" — a {guess} latent?" if guess else ""))


def check_family(family: LatentFamily, channels: int, scaling_factor: float, shift_factor: float | None = 0.0, *,
                 allow_mismatch: bool = False, override: str = "allow_mismatch") -> str | None:
    """The pairing rule between a Latent-CLIP that reads ``family`` and a generator whose latents
    have ``channels``, ``scaling_factor`` and ``shift_factor``.

    Same family: returns None. Other channel counts: :class:`LatentContractError` (nothing can
    run). Same channels, another VAE: :class:`LatentFamilyMismatch` naming both families, or,
    with ``allow_mismatch``, that message returned so that the caller shows it as a warning.
    ``override`` names the switch that allows the pairing, for the message."""
    reads = f"{family.description} latents ('{family.name}')"
    makes = describe_latents(channels, scaling_factor, shift_factor)
    if channels != family.channels:
        raise LatentContractError(f"this Latent-CLIP reads {family.channels}-channel {reads}; the diffusion model "
                                  f"makes {channels}-channel {makes}")
    if getattr(family_of(channels, scaling_factor, shift_factor), "name", None) == family.name:
        return None
    message = (f"this Latent-CLIP reads {reads} but the diffusion model makes {makes}: its rewards would read "
               f"another VAE's latent space")
    if not allow_mismatch:
        raise LatentFamilyMismatch(f"{message}. Use a Latent-CLIP trained on that model's latents, or set "
                                   f"{override} to experiment anyway")
    return message + f" ({override} is set)"


def tinyworld_warning(vision: VisionConfig, z: torch.Tensor) -> str | None:
    """The warning for a tiny-world Latent-CLIP (``vision.latent_family == "tinyworld"``) reading
    latents of another size than its procedural world's ``latent_size``; None otherwise. That model
    knows only its shapes world, so on other latents its scores are meaningless (near constant)."""
    side = vision.latent_size
    if vision.latent_family != "tinyworld" or tuple(z.shape[-2:]) == (side, side):
        return None
    return (f"the tiny-world demo Latent-CLIP only knows the {side}x{side} latents of its procedural shapes world; "
            f"these are {z.shape[-2]}x{z.shape[-1]}, so its numbers say nothing about them: use real "
            f"Latent-CLIP weights (e.g. the official B/8 for SDXL latents)")


def check_latents(z: object, family: LatentFamily, min_size: int) -> torch.Tensor:
    """Raise :class:`LatentContractError` unless ``z`` is a finite float (B, C, H, W) batch of
    ``family`` latents with H, W >= ``min_size`` (finite unless :func:`finite_by_construction` vouches for it);
    returns ``z`` unchanged."""
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
        raise channel_error(f"this model reads {c}-channel {family.description} latents ('{family.name}')", z.shape[1])
    if min(z.shape[-2:]) < min_size:
        raise LatentContractError(
            f"latent spatial size {tuple(z.shape[-2:])} is smaller than one patch ({min_size})")
    scan = z.device.type != "meta" and not _FINITE_BY_CONSTRUCTION.get()  # meta: shape/FLOP analysis only
    if scan and (bad := non_finite_items(z)):
        raise LatentContractError(f"latents contain NaN or Inf (batch items {bad})")
    return z


def non_finite_items(x: torch.Tensor) -> list[int]:
    """Indices along the first dimension of ``x`` (B, ...) whose entries include NaN or Inf. One scalar read
    from the device when there are none; the indices are read only when there are."""
    bad = ~torch.isfinite(x).reshape(len(x), -1).all(1)
    return bad.nonzero().flatten().tolist() if bad.any() else []


@contextmanager
def finite_by_construction() -> Iterator[None]:
    """Within the block :func:`check_latents` leaves out its NaN/Inf scan (on a GPU, a wait for the device):
    for a caller that made the latents finite itself, as ReNO's loop does before each reward."""
    token = _FINITE_BY_CONSTRUCTION.set(True)
    try:
        yield
    finally:
        _FINITE_BY_CONSTRUCTION.reset(token)


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
    raise ValueError(f"resize policy must be one of {get_args(ResizePolicy)}, got {policy!r}")
