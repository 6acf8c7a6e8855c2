"""Latent-CLIP: CLIP on VAE latents, as a torch-only library (never imports ComfyUI).

``LatentCLIP`` is imported on first use (PEP 562): its module builds on open_clip, which imports transformers,
so ``import latent_clip`` costs about torch alone until a model is built or loaded (docs/performance.md)."""
from .config import ConfigError, LatentFamily, ModelConfig, get_latent_family, get_model_config, \
    latent_families, list_models
from .contract import LatentContractError, LatentFamilyMismatch, check_family, family_of, raw_to_scaled, \
    scaled_to_raw
from .factory import convert, infer_config, load_model, save_export, save_official_checkpoint
from .score import Scores, rank_by_prompt, score_latents
from .weights import CheckpointError
from .zeroshot import build_classifier, classify

__all__ = [
    "CheckpointError", "ConfigError", "LatentCLIP", "LatentContractError", "LatentFamily", "LatentFamilyMismatch",
    "ModelConfig", "Scores", "build_classifier", "check_family", "classify", "convert", "family_of",
    "get_latent_family", "get_model_config", "infer_config", "latent_families", "list_models", "load_model",
    "rank_by_prompt", "raw_to_scaled", "save_export", "save_official_checkpoint", "scaled_to_raw", "score_latents",
]


def __getattr__(name: str):
    if name == "LatentCLIP":
        from .model import LatentCLIP
        return LatentCLIP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
