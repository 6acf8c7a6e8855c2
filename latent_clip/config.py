"""Architectures as data: latent families and Latent-CLIP model configs.

A model config uses the schema of the authors' open_clip fork (``embed_dim``, ``vision_cfg``,
``text_cfg``; ``vision_cfg`` carries ``latent_encoder_name``, ``latent_factor``,
``latent_n_channels``) plus ``vision_cfg.latent_family``, which names an entry of
``latent_families.json`` (channel count, VAE scaling/shift, encoder architecture).
Nothing in code hard-codes a channel count or a VAE scale.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

_HERE = Path(__file__).parent
CONFIG_DIR = _HERE / "model_configs"
FAMILIES_FILE = _HERE / "latent_families.json"


class ConfigError(ValueError):
    """A model config is unknown, malformed or inconsistent."""


@dataclass(frozen=True)
class LatentFamily:
    """One VAE latent space: what a LATENT of this family holds.

    ``raw = scaled / scaling_factor + shift_factor`` converts diffusers-style (UNet-space)
    latents to the raw VAE latents Latent-CLIP reads.
    """

    name: str
    description: str
    channels: int
    downscale: int
    scaling_factor: float
    shift_factor: float
    encoder: Mapping[str, Any] | None


@lru_cache(maxsize=1)
def latent_families() -> dict[str, LatentFamily]:
    data = json.loads(FAMILIES_FILE.read_text())
    return {name: LatentFamily(name=name, **entry) for name, entry in data.items()}


def get_latent_family(name: str) -> LatentFamily:
    families = latent_families()
    if name not in families:
        raise ConfigError(f"unknown latent family {name!r}; known: {', '.join(families)}")
    return families[name]


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    latent_factor: int = 8
    latent_n_channels: int = 4
    latent_family: str = "sdxl"
    latent_encoder_name: str | None = None

    @property
    def latent_size(self) -> int:
        """Side of the square latent the positional embedding was trained on (64 for 512 px)."""
        return self.image_size // self.latent_factor

    @property
    def grid_size(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def family(self) -> LatentFamily:
        return get_latent_family(self.latent_family)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig = field(default_factory=TextConfig)
    name: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> "ModelConfig":
        """Parse the official schema (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        try:
            vision_cfg = dict(data["vision_cfg"])
            text_cfg = dict(data.get("text_cfg", {}))
            embed_dim = int(data["embed_dim"])
        except (KeyError, TypeError) as err:
            raise ConfigError(f"config {name or ''} needs 'embed_dim' and 'vision_cfg': {err}") from err
        if vision_cfg.pop("latent_n_decoding_layers", 0):
            raise ConfigError(
                "partial-decoder variants (latent_n_decoding_layers > 0, e.g. Latent-ViT-B-8-D-1) are not "
                "supported: no released weights use them")
        try:
            vision = VisionConfig(**vision_cfg)
            text = TextConfig(**text_cfg)
        except TypeError as err:
            raise ConfigError(f"config {name or ''}: {err}") from err
        config = cls(embed_dim=embed_dim, vision=vision, text=text, name=data.get("name", name))
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The official schema, plus ``latent_family`` and ``name``."""
        return {"name": self.name, "embed_dim": self.embed_dim,
                "vision_cfg": asdict(self.vision), "text_cfg": asdict(self.text)}

    def validate(self) -> None:
        v, family = self.vision, self.vision.family
        if v.latent_n_channels != family.channels:
            raise ConfigError(f"latent_n_channels={v.latent_n_channels} but family {family.name!r} "
                              f"has {family.channels} channels")
        if v.image_size % v.latent_factor or v.latent_size % v.patch_size or v.grid_size < 1:
            raise ConfigError(f"image_size {v.image_size} / latent_factor {v.latent_factor} = latent "
                              f"{v.latent_size} is not a positive multiple of patch_size {v.patch_size}")
        if v.width % v.head_width or self.text.width % self.text.heads:
            raise ConfigError("widths must be divisible by the head counts")

    def with_name(self, name: str | None) -> "ModelConfig":
        return replace(self, name=name)


def list_models() -> list[str]:
    """Names of the bundled architecture configs (the fork's ``Latent-ViT-*`` variants)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name: str) -> ModelConfig:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown model config {name!r}; known: {', '.join(list_models())}")
    return ModelConfig.from_dict(json.loads(path.read_text()), name=name)


def resolve_config(config: "ModelConfig | Mapping[str, Any] | str | Path") -> ModelConfig:
    """Accept a ModelConfig, a dict in the official schema, a config name or a JSON path."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        return ModelConfig.from_dict(config)
    path = Path(config)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data.get("model_cfg", data), name=path.stem)
    return get_model_config(str(config))
