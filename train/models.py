"""Building and loading the models ``fit`` and ``eval`` use: Latent-CLIP, a pixel open_clip CLIP and its
preprocessing, the VAE, and a pixel CLIP that reads latents through the VAE decoder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from latent_clip import LatentCLIP
from latent_clip.config import resolve_config
from latent_clip.factory import load_weights
from latent_clip.rewards import clip_preprocess

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


def pixel_config(spec: Any) -> dict:
    """open_clip model config: a dict, a JSON path, or a name open_clip knows (``ViT-B-32``)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    path = Path(str(spec))
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        return data.get("model_cfg", data)
    cfg = open_clip.get_model_config(str(spec))
    if cfg is None:
        raise ValueError(f"unknown open_clip model {spec!r}: give a name, a JSON path or a dict")
    return cfg


def build_model(kind: str, spec: Any) -> nn.Module:
    if kind == "latent":
        return LatentCLIP(resolve_config(spec))
    if kind == "pixel":
        cfg = pixel_config(spec)
        model = open_clip.model.CLIP(**cfg)
        model.model_cfg = cfg
        return model
    raise ValueError(f"model_kind must be 'latent' or 'pixel', got {kind!r}")


def model_cfg_dict(model: nn.Module) -> dict:
    return model.config.to_dict() if isinstance(model, LatentCLIP) else dict(model.model_cfg)


def load_pixel_model(spec: Any, checkpoint: str | Path | None, device="cpu") -> nn.Module:
    """A pixel open_clip CLIP from a local checkpoint (open_clip training checkpoint, state dict or
    safetensors; ``module.`` stripped) and its architecture (name / JSON / dict)."""
    model = build_model("pixel", spec)
    if checkpoint:
        load_weights(model, checkpoint, label=str(spec))
    return model.to(device).eval().requires_grad_(False)


def pixel_preprocess(model: nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """A pixel CLIP's (input size, mean, std): open_clip's validation preprocessing, default OpenAI's."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    return size, tuple(pre.get("mean", OPENAI_DATASET_MEAN)), tuple(pre.get("std", OPENAI_DATASET_STD))


def pixel_transform(model: nn.Module) -> ImageTransform:
    """open_clip's validation transform for a pixel CLIP, on PIL images (see :func:`pixel_preprocess`)."""
    return ImageTransform(*pixel_preprocess(model))


class DecodedTeacher(nn.Module):
    """Frozen pixel CLIP looking at VAE-decoded latents: raw latents -> teacher image features.

    The decode is preprocessed as the pixel CLIP's own images are (:func:`pixel_transform`, the
    training data's transform): shorter side resized to the CLIP's size, centre-cropped, normalised
    with its mean/std (:func:`latent_clip.rewards.clip_preprocess`). A non-square latent is thus
    cropped, not squashed."""

    def __init__(self, teacher: nn.Module, vae):
        super().__init__()
        self.teacher, self.vae = teacher, vae
        self.size, self.mean, self.std = pixel_preprocess(teacher)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.vae.dtype)).sample.float()
        return self.teacher.encode_image(clip_preprocess(images, self.size, self.mean, self.std), normalize=True)
