"""Latent-CLIP models from weights files and back: the architecture read off the tensors, loading onto a
device and dtype, the project's export (``model.safetensors`` + ``model.json``) and the official checkpoint
layout. Files are read by :mod:`latent_clip.weights` and written by :mod:`latent_clip.files`."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors.torch import save_file

from .config import LIMITS, ConfigError, ModelConfig, TextConfig, VisionConfig, latent_families, list_models, \
    get_model_config, resolve_config
from .fields import shorten
from .files import atomic_write
from .pretrained import resolve_weights
from .weights import VAE_PREFIXES, CheckpointError, read_state_dict, refuse_non_finite, require_fit

if TYPE_CHECKING:  # the model module imports open_clip (and it transformers): loading a model brings them in
    from .model import LatentCLIP

VISION_BLOCKS, TEXT_BLOCKS = "visual.latent_vit.transformer.resblocks.", "transformer.resblocks."

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"not a Latent-CLIP state dict: missing {key!r} "
                              f"(found e.g. {', '.join(list(state)[:5])})")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape

def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks under ``prefix``: indices must be 0..n-1, n within the config limit."""
    pattern = re.compile(re.escape(prefix) + r"(\d{1,9})\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    n = max(indices) + 1 if indices else 0
    if n > LIMITS["layers"] or len(indices) != n:
        raise CheckpointError(f"{prefix}*: block indices run to {n - 1} over {len(indices)} distinct blocks; "
                              f"expected blocks 0..n-1 with n <= {LIMITS['layers']}")
    return n

def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """Architecture from tensor shapes; a bundled config with the same shapes lends its name,
    latent family and VAE name. Heads are width // 64, as in every official config."""
    v = "visual.latent_vit."
    width, channels, patch, _ = _shape(state, v + "conv1.weight", 4)
    tokens, _ = _shape(state, v + "positional_embedding", 2)
    grid = math.isqrt(max(tokens - 1, 0))
    if grid * grid != tokens - 1 or grid < 1:
        raise CheckpointError(f"vision positional embedding has {tokens} tokens, not a square grid + 1")
    text_ctx, text_width = _shape(state, "positional_embedding", 2)
    vocab, _ = _shape(state, "token_embedding.weight", 2)
    embed_dim = _shape(state, "visual.latent_vit.proj", 2)[1]
    family = next((f for f in latent_families().values() if f.channels == channels), None)
    if family is None:
        raise CheckpointError(f"no known latent family has {channels} channels")
    vision = VisionConfig(image_size=grid * patch * family.downscale, patch_size=patch, width=width,
                          layers=_count_layers(state, VISION_BLOCKS),
                          latent_factor=family.downscale, latent_n_channels=channels, latent_family=family.name)
    text = TextConfig(context_length=text_ctx, vocab_size=vocab, width=text_width, heads=text_width // 64,
                      layers=_count_layers(state, TEXT_BLOCKS))
    inferred = ModelConfig(embed_dim=embed_dim, vision=vision, text=text)
    try:
        inferred.validate()
    except ConfigError as err:
        raise CheckpointError(f"the tensors describe an unsupported architecture: {err}") from None
    vision_shape = ("latent_size", "patch_size", "width", "layers", "latent_n_channels")
    for name in list_models():
        known = get_model_config(name)
        if (known.embed_dim, known.text) == (embed_dim, text) and all(
                getattr(known.vision, k) == getattr(vision, k) for k in vision_shape):
            return known
    return inferred

def load_model(path: str | Path, config: ModelConfig | Mapping | str | Path | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
               vae_encoder: bool = True) -> LatentCLIP:
    """Load a Latent-CLIP from an official ``.pt`` checkpoint, a state dict or a safetensors export, given
    by its path or by its registry name (:mod:`latent_clip.pretrained`: read from the Hugging Face cache).

    ``config``: None (the registry's architecture for a file it names or recognises, else the export's JSON,
    else inferred from the tensors), a config name, a path to a JSON in the official schema, or a dict.
    ``vae_encoder=False`` drops a bundled VAE encoder (the pixel path) without reading it. Returns the model in
    eval mode.
    """
    from .model import LatentCLIP

    target = available_device(device or "cpu")  # before anything is read
    path, official = resolve_weights(path)
    state, stored = read_state_dict(path, vae_encoder=vae_encoder)
    if config is not None or official is not None:
        cfg = resolve_config(config if config is not None else official.config)
    elif stored is not None:
        try:
            cfg = ModelConfig.from_dict(stored)
        except ConfigError as err:
            raise CheckpointError(f"{Path(path).with_suffix('.json')}: {err}") from None
    else:
        try:
            cfg = infer_config(state)
        except CheckpointError as err:
            raise CheckpointError(f"{shorten(path)}: {err}") from None
    for prefix, layers in ((VISION_BLOCKS, cfg.vision.layers), (TEXT_BLOCKS, cfg.text.layers)):
        found = _count_layers(state, prefix)
        if found != layers:  # checked before anything is built from the config
            raise CheckpointError(f"{shorten(path)} has {found} blocks under {prefix}*, config "
                                  f"{cfg.name or '(inferred)'} expects {layers}")
    with_vae = any(k.startswith(VAE_PREFIXES) for k in state)
    with torch.device("meta"):  # bounded: the config passed its limits
        model = LatentCLIP(cfg, vae_encoder=with_vae)
    require_fit(model.state_dict(), state, f"{shorten(path)} does not match config {cfg.name or '(inferred)'}")
    model.load_state_dict(state, assign=True)
    n = cfg.text.context_length  # the causal mask is non-persistent: built on meta above
    model.attn_mask = torch.full((n, n), float("-inf")).triu_(1)
    model = model.to(device=target, dtype=resolve_dtype(dtype) or torch.float32)
    return model.eval().requires_grad_(False)

def available_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, once torch can use it: a CUDA device without a visible GPU is a
    ``ValueError`` in one line (torch's own is a traceback from deep inside ``Module.to``)."""
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {shorten(str(device), 40)!r} is not a torch device "
                         f"({shorten(str(err), 80)})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         f"use device='cpu'")
    return device

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
             for k, v in model.state_dict().items() if vae_encoder or not k.startswith(VAE_PREFIXES)}
    refuse_non_finite(state, path)  # after the cast: fp16 overflows to Inf
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    meta = {"model_cfg": model.config.to_dict(), "vae_encoder": any(k.startswith(VAE_PREFIXES) for k in state),
            "dtype": str(next(iter(state.values())).dtype).removeprefix("torch.")}
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return path

def official_state_dict(model: LatentCLIP) -> dict[str, torch.Tensor]:
    """The state dict as the authors' DDP training wrote it: every key prefixed ``module.``."""
    return {f"module.{k}": v for k, v in model.state_dict().items()}

def save_official_checkpoint(path: str | Path, model: LatentCLIP, epoch: int, name: str,
                             optimizer: Mapping | None = None, **extra: Any) -> Path:
    """Write an open_clip training checkpoint ``{epoch, name, state_dict, optimizer, ...}``
    atomically (temp file + rename); non-finite weights are refused."""
    path = Path(path)
    payload = {"epoch": epoch, "name": name, "state_dict": official_state_dict(model), **extra}
    refuse_non_finite(payload["state_dict"], path)
    if optimizer is not None:
        payload["optimizer"] = optimizer
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path

def convert(src: str | Path, dst: str | Path, config: Any = None, dtype: str | None = None,
            vae_encoder: bool = True) -> Path:
    """Official checkpoint (or any loadable weights) -> safetensors export at ``dst``."""
    model = load_model(src, config=config, vae_encoder=vae_encoder)
    return save_export(model, dst, dtype=dtype, vae_encoder=vae_encoder)
