"""Building and loading the models ``fit`` and ``eval`` use: Latent-CLIP, a pixel open_clip CLIP (through
:mod:`latent_clip.pixel_clip`), the VAE, and a pixel CLIP that reads latents through the VAE decoder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latent_clip import LatentCLIP
from latent_clip.config import resolve_config
from latent_clip.pixel_clip import build_pixel_clip, clip_preprocess, load_pixel_clip, pixel_clip_spec, \
    pixel_preprocess

from .data import ImageTransform


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             config: str | Path | None = None):
    """A diffusers AutoencoderKL from local files only: a diffusers folder (``config.json`` +
    weights) or a single ``.safetensors`` (``config`` = a local diffusers folder/config for its
    architecture, else diffusers' default inference, still offline)."""
    from diffusers import AutoencoderKL
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VAE not found: {path} (hub ids are not fetched; download it first)")
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    else:
        kwargs = {"config": str(config)} if config else {}
        vae = AutoencoderKL.from_single_file(str(path), local_files_only=True, torch_dtype=dtype, **kwargs)
    return vae.to(device).eval().requires_grad_(False)


def build_model(kind: str, spec: Any) -> nn.Module:
    if kind == "latent":
        return LatentCLIP(resolve_config(spec))
    if kind == "pixel":
        return build_pixel_clip(pixel_clip_spec(spec))
    raise ValueError(f"model_kind must be 'latent' or 'pixel', got {kind!r}")


def model_cfg_dict(model: nn.Module) -> dict:
    return model.config.to_dict() if isinstance(model, LatentCLIP) else dict(model.model_cfg)


def load_pixel_model(spec: Any, checkpoint: str | Path | None, device="cpu") -> nn.Module:
    """A frozen pixel open_clip CLIP of architecture ``spec`` (name, JSON path or dict) with the weights of a
    local ``checkpoint`` (open_clip training checkpoint, state dict or safetensors)."""
    return load_pixel_clip(pixel_clip_spec(spec), checkpoint, device)


def pixel_transform(model: nn.Module) -> ImageTransform:
    """open_clip's validation transform for a pixel CLIP, on PIL images (see :func:`pixel_preprocess`)."""
    return ImageTransform(*pixel_preprocess(model))


class DecodedTeacher(nn.Module):
    """Frozen pixel CLIP looking at VAE-decoded latents: raw latents -> teacher image features.

    The decode is preprocessed as the pixel CLIP's own images are (:func:`pixel_transform`, the
    training data's transform): shorter side resized to the CLIP's size, centre-cropped, normalised
    with its mean/std (:func:`latent_clip.pixel_clip.clip_preprocess`). A non-square latent is thus
    cropped, not squashed."""

    def __init__(self, teacher: nn.Module, vae):
        super().__init__()
        self.teacher, self.vae = teacher, vae
        self.size, self.mean, self.std = pixel_preprocess(teacher)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.vae.dtype)).sample.float()
        return self.teacher.encode_image(clip_preprocess(images, self.size, self.mean, self.std), normalize=True)
