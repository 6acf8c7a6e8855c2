"""Latent-CLIP: CLIP on VAE latents, as a torch-only library (never imports ComfyUI)."""
from .config import ConfigError, LatentFamily, ModelConfig, get_latent_family, get_model_config, \
    latent_families, list_models
from .contract import LatentContractError, raw_to_scaled, scaled_to_raw
from .factory import CheckpointError, convert, infer_config, load_model, save_export, save_official_checkpoint
from .model import LatentCLIP

__all__ = [
    "CheckpointError", "ConfigError", "LatentCLIP", "LatentContractError", "LatentFamily", "ModelConfig",
    "convert", "get_latent_family", "get_model_config", "infer_config", "latent_families", "list_models",
    "load_model", "raw_to_scaled", "save_export", "save_official_checkpoint", "scaled_to_raw",
]
