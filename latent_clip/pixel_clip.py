"""Pixel open_clip CLIPs, the one way the pack builds, loads and feeds them: the nodes' Pixel CLIP reward,
the benchmarks' pixel rewards, the trainer's pixel baseline and distillation teacher, the tiny world's CLIPs.

An architecture (``spec``) is a name of ``open_clip.list_models()`` (a ``str``; never a hub id: nothing is
downloaded), a ``Path`` to a JSON file holding an open_clip model config (or ``{"model_cfg": ...}``), or such a
config as a dict. Text from a graph is only ever a name (a path in it is refused as an unknown name); a
command line's text becomes a ``Path`` when it ends in ``.json`` (:func:`pixel_clip_spec`).
Weights are read by :func:`latent_clip.weights.read_state_dict` (bounded, allow-listed) before the model is
built, then loaded strictly. Images reach the model as open_clip's validation transform would give them
(:func:`pixel_preprocess`), differentiably (:func:`clip_normalise`). open_clip is imported when a model is
built, not with the library.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fields import shorten
from .weights import read_state_dict, require_fit

# open_clip's OPENAI_DATASET_MEAN/STD (tests check they are equal), the default when a model carries no
# preprocess_cfg of its own
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pixel_clip_spec(spec: str | Path | Mapping[str, Any]) -> str | Path | Mapping[str, Any]:
    """An architecture as a command line or a run's settings give it: text ending in ``.json`` becomes a
    ``Path``; a name, a ``Path`` or a dict is returned as it is."""
    return Path(spec.strip()) if isinstance(spec, str) and spec.strip().endswith(".json") else spec


def pixel_clip_config(spec: str | Path | Mapping[str, Any]) -> dict:
    """The open_clip model config ``spec`` gives (see the module docstring), else ``ValueError``."""
    import open_clip
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, Path):
        data = json.loads(spec.read_text())
        return data.get("model_cfg", data)
    name = spec.strip()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {shorten(name, 60)!r}: expected a name of "
                         f"open_clip.list_models(), e.g. ViT-B-32, ViT-L-14, ViT-H-14, or a JSON config")
    return open_clip.get_model_config(name)


def build_pixel_clip(spec: str | Path | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised, trainable open_clip CLIP of architecture ``spec``, fp32 on the CPU, its config
    kept as ``model.model_cfg``. A name is built by ``open_clip.create_model`` (which also sets its
    ``preprocess_cfg``), a config by ``open_clip.model.CLIP``."""
    import open_clip
    cfg = pixel_clip_config(spec)
    if isinstance(spec, str):
        model = open_clip.create_model(spec.strip(), pretrained=None, device="cpu", precision="fp32")
    else:
        model = open_clip.model.CLIP(**cfg)
    model.model_cfg = cfg
    return model


def load_pixel_clip(spec: str | Path | Mapping[str, Any], checkpoint: str | Path | None,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """An open_clip CLIP of architecture ``spec`` holding the weights of ``checkpoint`` (any format
    :func:`~latent_clip.weights.read_state_dict` reads; None: initial weights), in eval mode, without
    gradients, on ``device`` in ``dtype``. Weights that do not fit are a ``CheckpointError`` naming both."""
    pixel_clip_config(spec)  # an unknown name fails before the file is read
    state = read_state_dict(checkpoint)[0] if checkpoint else None
    model = build_pixel_clip(spec)
    if state is not None:
        label = spec.strip() if isinstance(spec, str) else f"config {spec}" if isinstance(spec, Path) else "config"
        require_fit(model.state_dict(), state, f"{shorten(checkpoint)} does not fit open_clip {shorten(label, 60)}")
        model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def pixel_tokenizer(spec: str | Path | Mapping[str, Any], model: nn.Module) -> Callable:
    """The tokenizer of ``model`` (built from ``spec``): open_clip's own for a named architecture, else
    open_clip's CLIP tokenizer at the model's context length."""
    import open_clip
    if isinstance(spec, str):
        return open_clip.get_tokenizer(spec.strip())
    return partial(open_clip.tokenize, context_length=model.context_length)


def pixel_preprocess(model: nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """A pixel CLIP's (input size, mean, std): open_clip's validation preprocessing, OpenAI's mean/std when
    the model carries none."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    pre = getattr(model.visual, "preprocess_cfg", None) or {}
    return size, tuple(pre.get("mean", CLIP_MEAN)), tuple(pre.get("std", CLIP_STD))


def clip_normalise(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> CLIP input (B, 3, size, size): bicubic resize of the short
    side, centre crop, normalise with ``mean``/``std`` (ReNO's shared preprocess). Differentiable."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(images, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                      align_corners=False, antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def clip_preprocess(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Images in [-1, 1] (a VAE decode) -> ``(x / 2 + 0.5).clamp(0, 1)`` -> :func:`clip_normalise`."""
    return clip_normalise((images / 2 + 0.5).clamp(0, 1), size, mean, std)
