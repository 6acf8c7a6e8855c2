"""Loading and writing Latent-CLIP weights, safely.

Formats read by :func:`load_model`:

* official open_clip training checkpoints (``epoch_34.pt``): ``{epoch, name, state_dict, optimizer}``,
  keys prefixed ``module.``; read with ``torch.load(weights_only=True, mmap=True)`` so nothing
  pickled is executed and the optimizer state / VAE encoder are never read when not wanted;
* bare state dicts in ``.pt``/``.pth``/``.bin`` files (same rules);
* the project's export: ``model.safetensors`` + ``model.json`` (``{"model_cfg": ...}``) beside it.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ConfigError, ModelConfig, TextConfig, VisionConfig, latent_families, list_models, \
    get_model_config, resolve_config
from .model import LatentCLIP

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
VAE_PREFIXES = ("visual.vae_encoder.", "visual.vae_quant_conv.")
STRIP_PREFIXES = ("module.", "_orig_mod.")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The only globals an official open_clip checkpoint needs besides tensors: numpy scalars/dtypes that
# open_clip's cosine LR schedule leaves in the optimizer's param_groups. Pickled under numpy 1 names
# (numpy.core) and numpy 2 names (numpy._core).
SAFE_GLOBALS = [
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np._core.multiarray.scalar,
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
]


class CheckpointError(RuntimeError):
    """A weights file cannot be read as a Latent-CLIP checkpoint."""


def strip_prefixes(key: str) -> str:
    """Drop the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any order."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def is_vae_key(key: str) -> bool:
    return key.startswith(VAE_PREFIXES)


def export_config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def load_pickle_safely(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, plain data and :data:`SAFE_GLOBALS` only),
    memory-mapped when the file allows it; anything else raises :class:`CheckpointError`."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain data, "
            f"which could run arbitrary code ({first_line}). Only official checkpoints, state dicts and "
            f"safetensors exports are accepted.") from None


def read_state_dict(path: str | Path, vae_encoder: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read weights from ``path`` -> (state dict with prefixes stripped, config dict or None).

    The config is the ``model_cfg`` of a safetensors export's JSON. ``vae_encoder=False`` skips the
    bundled VAE encoder keys without reading them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if vae_encoder or not is_vae_key(k)}
        cfg_path = export_config_path(path)
        config = json.loads(cfg_path.read_text()).get("model_cfg") if cfg_path.is_file() else None
        return state, config
    if path.suffix not in PT_SUFFIXES:
        raise CheckpointError(f"unsupported weights file {path.name}: expected .safetensors or one of {PT_SUFFIXES}")
    obj = load_pickle_safely(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors or an open_clip "
                              f"checkpoint with a 'state_dict' entry)")
    state = {strip_prefixes(k): v for k, v in obj.items()}
    if not vae_encoder:
        state = {k: v for k, v in state.items() if not is_vae_key(k)}
    return state, None


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"not a Latent-CLIP state dict: missing {key!r} "
                              f"(found e.g. {', '.join(list(state)[:5])})")
    return tuple(state[key].shape)


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """Architecture from tensor shapes; a bundled config with the same shapes lends its name,
    latent family and VAE name. Heads are width // 64, as in every official config."""
    v = "visual.latent_vit."
    width, channels, patch, _ = _shape(state, v + "conv1.weight")
    tokens, _ = _shape(state, v + "positional_embedding")
    grid = int(round((tokens - 1) ** 0.5))
    if grid * grid != tokens - 1:
        raise CheckpointError(f"vision positional embedding has {tokens} tokens, not a square grid + 1")
    text_ctx, text_width = _shape(state, "positional_embedding")
    vocab, _ = _shape(state, "token_embedding.weight")
    embed_dim = _shape(state, "visual.latent_vit.proj")[1]
    families = [f for f in latent_families().values() if f.channels == channels]
    if not families:
        raise CheckpointError(f"no known latent family has {channels} channels")
    family = families[0]
    vision = VisionConfig(image_size=grid * patch * family.downscale, patch_size=patch, width=width,
                          layers=_count_layers(state, v + "transformer.resblocks."),
                          latent_factor=family.downscale, latent_n_channels=channels, latent_family=family.name)
    text = TextConfig(context_length=text_ctx, vocab_size=vocab, width=text_width, heads=text_width // 64,
                      layers=_count_layers(state, "transformer.resblocks."))
    inferred = ModelConfig(embed_dim=embed_dim, vision=vision, text=text)
    for name in list_models():
        known = get_model_config(name)
        if (known.embed_dim, known.text) == (embed_dim, text) and _same_shape(known.vision, vision):
            return known
    inferred.validate()
    return inferred


def _same_shape(a: VisionConfig, b: VisionConfig) -> bool:
    keys = ("latent_size", "patch_size", "width", "layers", "latent_n_channels")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def load_model(path: str | Path, config: ModelConfig | Mapping | str | Path | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
               vae_encoder: bool = True) -> LatentCLIP:
    """Load a Latent-CLIP from an official ``.pt`` checkpoint, a state dict or a safetensors export.

    ``config``: None (use the export's JSON, else infer from the tensors), a config name, a path to
    a JSON in the official schema, or a dict. ``vae_encoder=False`` drops a bundled VAE encoder
    (the pixel path) without reading it. Returns the model in eval mode.
    """
    state, stored = read_state_dict(path, vae_encoder=vae_encoder)
    if config is not None:
        cfg = resolve_config(config)
    elif stored is not None:
        cfg = ModelConfig.from_dict(stored)
    else:
        cfg = infer_config(state)
    with_vae = any(is_vae_key(k) for k in state)
    with torch.device("meta"):
        model = LatentCLIP(cfg, vae_encoder=with_vae)
    missing, unexpected = _diff_keys(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(
            f"{Path(path).name} does not match config {cfg.name or '(inferred)'}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, tensor in model.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{key}: checkpoint has shape {tuple(state[key].shape)}, config "
                                  f"{cfg.name or '(inferred)'} expects {tuple(tensor.shape)}")
    model.load_state_dict(state, assign=True)
    model.attn_mask = _causal_mask(cfg.text.context_length)  # non-persistent: built on meta above
    model = model.to(device=device or "cpu", dtype=resolve_dtype(dtype) or torch.float32)
    return model.eval().requires_grad_(False)


def _causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)


def _diff_keys(expected: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def save_export(model: LatentCLIP, path: str | Path, dtype: torch.dtype | str | None = None,
                vae_encoder: bool = True) -> Path:
    """Write ``path`` (.safetensors) and its JSON config beside it; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path must end in .safetensors, got {path.name}")
    target = resolve_dtype(dtype)
    state = {k: (v.to(target) if target else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items() if vae_encoder or not is_vae_key(k)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    meta = {"model_cfg": model.config.to_dict(), "vae_encoder": any(is_vae_key(k) for k in state),
            "dtype": str(next(iter(state.values())).dtype).removeprefix("torch.")}
    _atomic(export_config_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def official_state_dict(model: LatentCLIP) -> dict[str, torch.Tensor]:
    """The state dict as the authors' DDP training wrote it: every key prefixed ``module.``."""
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def save_official_checkpoint(path: str | Path, model: LatentCLIP, epoch: int, name: str,
                             optimizer: Mapping | None = None, **extra: Any) -> Path:
    """Write an open_clip training checkpoint ``{epoch, name, state_dict, optimizer, ...}``
    atomically (temp file + rename)."""
    path = Path(path)
    payload = {"epoch": epoch, "name": name, "state_dict": official_state_dict(model), **extra}
    if optimizer is not None:
        payload["optimizer"] = optimizer
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: torch.save(payload, tmp))
    return path


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def convert(src: str | Path, dst: str | Path, config: Any = None, dtype: str | None = None,
            vae_encoder: bool = True) -> Path:
    """Official checkpoint (or any loadable weights) -> safetensors export at ``dst``."""
    model = load_model(src, config=config, vae_encoder=vae_encoder)
    return save_export(model, dst, dtype=dtype, vae_encoder=vae_encoder)


__all__ = ["CheckpointError", "ConfigError", "convert", "infer_config", "load_model", "official_state_dict",
           "read_state_dict", "resolve_dtype", "save_export", "save_official_checkpoint"]
