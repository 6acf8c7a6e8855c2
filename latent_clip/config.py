"""Architectures as data: latent families and Latent-CLIP model configs.

A model config uses the schema of the authors' open_clip fork (``embed_dim``, ``vision_cfg``,
``text_cfg``; ``vision_cfg`` carries ``latent_encoder_name``, ``latent_factor``,
``latent_n_channels``) plus ``vision_cfg.latent_family``, which names an entry of
``latent_families.json`` (channel count, VAE scaling/shift, encoder architecture): the library, the nodes
and the trainer read channel counts and VAE scales from there (the tests' tiny configs write their own).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

_HERE = Path(__file__).parent
CONFIG_DIR = _HERE / "model_configs"
FAMILIES_FILE = _HERE / "latent_families.json"
DEMO_DIR = _HERE / "assets" / "tinyworld"  # the tiny-world demo models that ship with the package (train/tinyworld)
DEMO_WEIGHTS = DEMO_DIR / "latent_clip.safetensors"  # its Latent-CLIP, the loader node's embedded choice


# What a config may ask for, checked before any module is built: far above every released Latent-CLIP
# (ViT-B: width 768, 12 layers, 77 text tokens, a 16x16 token grid), far below what would cost gigabytes
# before a weight is read (a 16,000-token context's causal mask alone is 1 GB).
LIMITS = {"layers": 64, "width": 4096, "embed_dim": 4096, "context_length": 1024, "vocab_size": 1 << 20,
          "grid_size": 128, "patch_size": 64, "latent_factor": 64, "mlp_ratio": 16}


class ConfigError(ValueError):
    """A model config is unknown, malformed or inconsistent."""


@dataclass(frozen=True)
class LatentFamily:
    """One VAE latent space: what a LATENT of this family holds.

    ``raw = scaled / scaling_factor + shift_factor`` converts diffusers-style (UNet-space)
    latents to the raw VAE latents Latent-CLIP reads. ``description`` names the VAE in a few words, inside
    messages ("reads 4-channel <description> latents ('<name>')").
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
        """Parse the official schema (``embed_dim``, ``vision_cfg``, ``text_cfg``); raises
        :class:`ConfigError` on anything malformed or beyond :data:`LIMITS`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config {name or '(unnamed)'}: expected a JSON object with 'embed_dim' and "
                              f"'vision_cfg', got {type(data).__name__}")
        name = data.get("name", name)
        label = f"config {name or '(unnamed)'}"
        if "embed_dim" not in data or "vision_cfg" not in data:
            raise ConfigError(f"{label} needs 'embed_dim' and 'vision_cfg', has {sorted(map(str, data))[:8]}")
        sections = {"vision_cfg": data["vision_cfg"], "text_cfg": data.get("text_cfg", {})}
        for key, section in sections.items():
            if not isinstance(section, Mapping):
                raise ConfigError(f"{label}: {key} must be an object, got {type(section).__name__}")
        vision_cfg, text_cfg = dict(sections["vision_cfg"]), dict(sections["text_cfg"])
        if vision_cfg.pop("latent_n_decoding_layers", 0):
            raise ConfigError(
                "partial-decoder variants (latent_n_decoding_layers > 0, e.g. Latent-ViT-B-8-D-1) are not "
                "supported: no released weights use them")
        try:
            vision = VisionConfig(**vision_cfg)
            text = TextConfig(**text_cfg)
        except TypeError as err:
            raise ConfigError(f"{label}: {err}") from None
        config = cls(embed_dim=data["embed_dim"], vision=vision, text=text, name=name)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The official schema, plus ``latent_family`` and ``name``."""
        return {"name": self.name, "embed_dim": self.embed_dim,
                "vision_cfg": asdict(self.vision), "text_cfg": asdict(self.text)}

    def validate(self) -> None:
        """Types, :data:`LIMITS` and consistency; raises :class:`ConfigError`."""
        label = f"config {self.name or '(unnamed)'}"
        _check_number(label, "embed_dim", self.embed_dim, int)
        sections = (("vision_cfg", self.vision), ("text_cfg", self.text))
        for section, cfg in sections:
            for f in fields(cfg):
                kind = {"int": int, "float": float}.get(str(f.type))
                if kind is not None:
                    _check_number(label, f"{section}.{f.name}", getattr(cfg, f.name), kind)
                elif str(f.type).startswith("str") and not isinstance(getattr(cfg, f.name), (str, type(None))):
                    raise ConfigError(f"{label}: {section}.{f.name} must be a string")
        v, t = self.vision, self.text
        try:
            family = v.family
        except ConfigError as err:  # an unknown family
            raise ConfigError(f"{label}: {err}") from None
        if v.latent_n_channels != family.channels:
            raise ConfigError(f"{label}: latent_n_channels={v.latent_n_channels} but family {family.name!r} "
                              f"has {family.channels} channels")
        if v.image_size % v.latent_factor or v.latent_size % v.patch_size or v.grid_size < 1:
            raise ConfigError(f"{label}: image_size {v.image_size} / latent_factor {v.latent_factor} = latent "
                              f"{v.latent_size} is not a positive multiple of patch_size {v.patch_size}")
        if v.width % v.head_width or t.width % t.heads:
            raise ConfigError(f"{label}: widths must be divisible by the head counts")
        limited = [("embed_dim", self.embed_dim, "embed_dim"), ("the vision token grid", v.grid_size, "grid_size")]
        limited += [(f"{section}.{f.name}", getattr(cfg, f.name), f.name) for section, cfg in sections
                    for f in fields(cfg) if f.name in LIMITS]  # every field named in LIMITS
        for what, value, limit in limited:
            if value > LIMITS[limit]:
                raise ConfigError(f"{label}: {what} is {str(value)[:20]}, above the limit of {LIMITS[limit]} "
                                  f"(latent_clip.config.LIMITS)")


def _check_number(label: str, what: str, value: Any, kind: type) -> None:
    """``value`` must be a positive (finite) ``kind``; ints count as floats, bools as nothing."""
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ConfigError(f"{label}: {what} must be a positive {kind.__name__}, got {value!r} "
                          f"({type(value).__name__})")


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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:  # also not UTF-8, or a number too long to parse
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return ModelConfig.from_dict(data.get("model_cfg", data) if isinstance(data, dict) else data, name=path.stem)
    return get_model_config(str(config))
