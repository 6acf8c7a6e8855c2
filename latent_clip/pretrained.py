"""Known Latent-CLIP weights: documentation only, nothing is ever downloaded.

Download the file yourself (e.g. ``huggingface-cli download <hf_repo> <hf_file>``) and pass its
local path to :func:`latent_clip.load_model`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainedWeights:
    name: str
    config: str          # architecture name in latent_clip/model_configs
    hf_repo: str
    hf_file: str
    latent_family: str   # the VAE whose raw latents the weights expect
    notes: str = ""


_REGISTRY = (
    PretrainedWeights("latent-clip-b-8-512-34b-80k", "Latent-ViT-B-8-512",
                      "wendlerc/latent-clip-b-8-512-34b-80k", "checkpoints/epoch_34.pt", "sdxl",
                      "official ViT-B/8, 34B samples; ImageNet zero-shot 68.8 (paper)"),
    PretrainedWeights("latent-clip-b-4-512-plus-34b-80k", "Latent-ViT-B-4-512-plus",
                      "wendlerc/latent-clip-b-4-512-plus-34b-80k", "checkpoints/epoch_34.pt", "sdxl",
                      "official ViT-B/4-plus, 34B samples; ImageNet zero-shot 73.5 (paper)"),
    PretrainedWeights("latent-clip-b-8-512-34b-40k", "Latent-ViT-B-8-512",
                      "wendlerc/latent-clip-b-8-512-34b-40k", "checkpoints/epoch_34.pt", "sdxl",
                      "file name assumed from the 34b-80k repos (unverified)"),
    PretrainedWeights("latent-clip-b-4-512-13b-80k", "Latent-ViT-B-4-512",
                      "wendlerc/latent-clip-b-4-512-13b-80k", "checkpoints/epoch_13.pt", "sdxl",
                      "file name inferred from the 13-epoch schedule (unverified)"),
    PretrainedWeights("latent-clip-b-4-512-plus-13b-80k", "Latent-ViT-B-4-512-plus",
                      "wendlerc/latent-clip-b-4-512-plus-13b-80k", "checkpoints/epoch_13.pt", "sdxl",
                      "file name inferred from the 13-epoch schedule (unverified)"),
)


def list_pretrained() -> list[PretrainedWeights]:
    return list(_REGISTRY)


def get_pretrained(name: str) -> PretrainedWeights:
    for entry in _REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown weights {name!r}; known: {', '.join(e.name for e in _REGISTRY)}")
