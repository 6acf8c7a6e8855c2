"""Loading and writing Latent-CLIP weights, safely.

Formats read by :func:`load_model`:

* official open_clip training checkpoints (``epoch_34.pt``): ``{epoch, name, state_dict, optimizer}``,
  keys prefixed ``module.``; read with ``torch.load(weights_only=True, mmap=True)`` so nothing
  pickled is executed and the optimizer state / VAE encoder are never read when not wanted;
* bare state dicts in ``.pt``/``.pth``/``.bin`` files (same rules);
* the project's export: ``model.safetensors`` + ``model.json`` (``{"model_cfg": ...}``) beside it.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import LIMITS, ConfigError, ModelConfig, TextConfig, VisionConfig, latent_families, list_models, \
    get_model_config, resolve_config
from .fields import one_line, shorten
from .filebounds import FileLimitError, check_keys, check_safetensors_header, check_torch_zip, \
    read_bounded
from .model import LatentCLIP

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
VAE_PREFIXES = ("visual.vae_encoder.", "visual.vae_quant_conv.")
STRIP_PREFIXES = re.compile(r"^(?:module\.|_orig_mod\.)+")
VISION_BLOCKS, TEXT_BLOCKS = "visual.latent_vit.transformer.resblocks.", "transformer.resblocks."
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Real-number numpy dtypes: open_clip's cosine LR schedule leaves np.float64 learning rates in the
# optimizer's param_groups, so official checkpoints pickle numpy scalars of these dtypes (and nothing else).
REAL_NUMPY_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                np.uint32, np.uint64, np.float16, np.float32, np.float64))
_DTYPE_SPECS = {d.__reduce__()[1][0] for d in REAL_NUMPY_DTYPES}  # what np.dtype.__reduce__ pickles: "f8", ...
PICKLE_REFUSED = ("Unsupported global", "Can only build", "Can only create new object", "Trying to call reduce",
                  "is blocked", "refused: only")


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` as an unpickler calls it, for real-number dtypes only (a void dtype such as
    ``V1000000000`` would let a 500-byte file allocate gigabytes)."""
    if not (isinstance(spec, str) and spec in _DTYPE_SPECS) or align is not False or copy is not True:
        raise pickle.UnpicklingError(f"numpy dtype {str(spec)[:40]!r} refused: only bool/int/uint/float dtypes")
    return np.dtype(spec, False, True)  # a copy: the unpickler then sets its byte order (BUILD)


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, bytes)`` for real-number scalars whose bytes are all given."""
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf" and dtype.fields is None and dtype.itemsize <= 8
            and isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {str(dtype)[:40]} refused: only real-number scalars "
                                     f"with their bytes")
    return np.frombuffer(data, dtype=dtype)[0]


# The only globals allowed besides tensors and plain data, under numpy 1 (numpy.core) and 2 (numpy._core)
# names; the dtype classes are listed because the unpickler sets a dtype's byte order on it (BUILD).
SAFE_GLOBALS = [(_numpy_scalar, "numpy.core.multiarray.scalar"), (_numpy_scalar, "numpy._core.multiarray.scalar"),
                (_numpy_dtype, "numpy.dtype"), *{type(d) for d in REAL_NUMPY_DTYPES}]
MAX_SIDECAR_BYTES = 1 << 20  # an export's JSON config (a B/8's is 1 KB)
# Weights are real floating-point numbers: complex, float8, integer and boolean tensors are refused by dtype
# (float8 has no NaN check; a NaN stored as complex64 would load; an integer weight is a wrong file). The one
# integer tensor a CLIP has is BatchNorm's scalar step counter (open_clip's ResNet CLIPs).
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
COUNTER_SUFFIX = "num_batches_tracked"


class CheckpointError(RuntimeError):
    """A weights file cannot be read as a Latent-CLIP checkpoint; the message is one bounded line."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def strip_prefixes(key: str) -> str:
    """Drop the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any order."""
    return STRIP_PREFIXES.sub("", key)


def is_safetensors(path: Path) -> bool:
    """By content: an 8-byte little-endian header length, then a JSON object, within the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def load_pickle_safely(path: Path | bytes, name: object = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, plain data and real-number numpy scalars
    only) of a zip-format file (a path, memory-mapped, or its bytes named ``name``) whose directory is
    within :func:`~latent_clip.filebounds.check_torch_zip`'s limits. A file with other pickled objects,
    or one that is empty, truncated, legacy or not a PyTorch file, raises :class:`CheckpointError`;
    nothing in it is run."""
    data = path if isinstance(path, bytes) else None
    path = name if data is not None else Path(path)
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise CheckpointError(f"cannot read {shorten(path)}: the file is empty (0 bytes)")
    try:
        check_torch_zip(data if data is not None else path, path)
        with only_our_safe_globals():
            if data is not None:
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileLimitError as err:
        raise CheckpointError(str(err)) from None
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(str(err))
        if not any(marker in reason for marker in PICKLE_REFUSED):
            raise CheckpointError(f"cannot read {shorten(path)}: not a valid PyTorch checkpoint "
                                  f"({shorten(reason, 80)})") from None
        raise CheckpointError(
            f"refusing to load {shorten(path)}: it contains pickled objects other than tensors, plain data and "
            f"real-number numpy scalars ({shorten(reason, 80)}); nothing in it was run") from None
    except (EOFError, OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as err:
        raise CheckpointError(f"cannot read {shorten(path)}: truncated or not a PyTorch checkpoint "
                              f"({_first_line(err)})") from None


_SAFE_GLOBALS_LOCK = threading.Lock()


@contextmanager
def only_our_safe_globals():
    """The ``weights_only`` unpickler with exactly :data:`SAFE_GLOBALS` beside torch's own. Globals that
    others allow process-wide are set aside meanwhile and put back after: ComfyUI allows numpy's
    unbounded ``scalar`` and ``dtype`` under the same names, and which of two same-named entries the
    unpickler picks is arbitrary."""
    with _SAFE_GLOBALS_LOCK:
        saved = torch.serialization.get_safe_globals()
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(SAFE_GLOBALS)
        try:
            yield
        finally:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(saved)


def _unpickler_reason(message: str) -> str:
    """The unpickler's own line inside torch's long ``weights_only`` message."""
    tail = message.rsplit("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.split("Check the documentation of torch.load")[0].splitlines()]
    return next((line for line in reversed(lines) if line), message.strip()[:200])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {shorten(text.splitlines()[0], 80)}" if text else type(err).__name__


def read_state_dict(path: str | Path, vae_encoder: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read weights from ``path`` -> (state dict with prefixes stripped, config dict or None).

    The format is read from the content (a safetensors file named ``.pt`` is read as safetensors).
    The config is the ``model_cfg`` of a safetensors export's JSON. ``vae_encoder=False`` skips the
    bundled VAE encoder keys without reading them. Every tensor is checked before use
    (:func:`check_tensors`): the cost of anything the file asks for is bounded by its size.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such weights file: {shorten(path)}")
    if path.suffix not in (".safetensors", *PT_SUFFIXES):
        raise CheckpointError(f"unsupported weights file {shorten(path.name)}: expected .safetensors or one of "
                              f"{PT_SUFFIXES}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {shorten(path)}: the file is empty (0 bytes)")
    if is_safetensors(path):
        try:
            check_safetensors_header(path)
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys() if vae_encoder or not k.startswith(VAE_PREFIXES)}
        except FileLimitError as err:
            raise CheckpointError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - safetensors raises its own untyped errors
            raise CheckpointError(f"cannot read {shorten(path)}: not a valid safetensors file "
                                  f"({_first_line(err)})") from None
        config = read_export_config(path.with_suffix(".json"))
    elif path.suffix == ".safetensors":
        raise CheckpointError(f"cannot read {shorten(path)}: not a valid safetensors file (no safetensors header)")
    else:
        obj = load_pickle_safely(path)
        if isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{shorten(path)} holds no state dict (expected a dict of tensors or an "
                                  f"open_clip checkpoint with a 'state_dict' entry)")
        bad_key = next((k for k in obj if not isinstance(k, str)), None)
        if bad_key is not None:
            raise CheckpointError(f"{shorten(path)}: state dict key {shorten(repr(bad_key), 40)} is not a string "
                                  f"({type(bad_key).__name__}); expected parameter names")
        stripped = ((strip_prefixes(k), v) for k, v in obj.items())
        state = {k: v for k, v in stripped if vae_encoder or not k.startswith(VAE_PREFIXES)}
        config = None
    check_tensors(state, path)
    return state, config


def load_weights(model: torch.nn.Module, path: str | Path, label: str | None = None) -> torch.nn.Module:
    """Strictly load ``path`` (any format :func:`read_state_dict` reads) into ``model`` of the same
    architecture (a Latent-CLIP or a pixel open_clip CLIP): every key with its shape, nothing extra,
    else ``ValueError`` naming ``label`` (default: the model's class). Returns ``model``."""
    state, _ = read_state_dict(path)
    _require_fit(model.state_dict(), state,
                 f"{shorten(path)} does not fit {shorten(label or type(model).__name__, 60)}", ValueError)
    model.load_state_dict(state)
    return model


def load_open_clip(arch: str, path: str | Path) -> torch.nn.Module:
    """An open_clip model of architecture ``arch`` (a name of ``open_clip.list_models()``: never a hub id,
    nothing is downloaded) holding the weights of ``path``, read by :func:`read_state_dict` (bounded and
    allow-listed, as every weights file of the pack) before the model is built, then loaded strictly.
    fp32 on the CPU, in eval mode, without gradients."""
    import open_clip
    arch = arch.strip()
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {shorten(arch, 60)!r}: expected a name of "
                         f"open_clip.list_models(), e.g. ViT-B-32, ViT-L-14, ViT-H-14")
    state, _ = read_state_dict(path)
    model = open_clip.create_model(arch, pretrained=None, device="cpu", precision="fp32")
    _require_fit(model.state_dict(), state, f"{shorten(path)} does not fit open_clip {arch}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def read_export_config(path: Path) -> dict | None:
    """The ``model_cfg`` of an export's JSON sidecar; None when there is no sidecar or it has none.
    At most :data:`MAX_SIDECAR_BYTES` are read, whatever the file claims (a symlink to ``/proc`` or
    ``/dev/zero``), and nesting too deep to parse is an error naming the file."""
    if not path.exists():
        return None
    if not path.is_file():  # a device or a FIFO: reading could block or never end
        raise CheckpointError(f"{shorten(path)}: config sidecar is not a regular file")
    try:
        data = json.loads(read_bounded(path, MAX_SIDECAR_BYTES, "config sidecar").decode("utf-8"))
    except FileLimitError as err:
        raise CheckpointError(str(err)) from None
    except ValueError as err:  # also not UTF-8, or a number too long to parse
        raise CheckpointError(f"{shorten(path)}: config sidecar is not valid JSON ({shorten(str(err), 80)})") from None
    except RecursionError:
        raise CheckpointError(f"{shorten(path)}: config sidecar is nested too deeply to parse; expected "
                              f"{{\"model_cfg\": {{...}}}}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg", {}), dict):
        raise CheckpointError(f"{shorten(path)}: config sidecar must be a JSON object {{\"model_cfg\": {{...}}}}, "
                              f"got {type(data).__name__}")
    return data.get("model_cfg")


def check_tensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors that cost more than the file holds or carry no usable values: more of them or
    longer names than :func:`~latent_clip.filebounds.check_keys` allows, meta or sparse tensors, dtypes other than
    :data:`WEIGHT_DTYPES`, views whose data exceed the file (stride-0 expansions, overlapping views),
    NaN/Inf."""
    budget = path.stat().st_size
    try:
        check_keys(state, len(state), path)
    except FileLimitError as err:
        raise CheckpointError(str(err)) from None
    total = 0
    for key, t in state.items():
        if t.device.type != "cpu" or t.layout != torch.strided:
            layout = str(t.layout).removeprefix("torch.")
            raise CheckpointError(f"{shorten(path)}: tensor {shorten(key, 60)} is a {t.device.type} {layout} "
                                  f"tensor, expected dense weights with data")
        counter = key.endswith(COUNTER_SUFFIX) and t.dtype == torch.int64 and t.numel() == 1
        if t.dtype not in WEIGHT_DTYPES and not counter:
            names = ", ".join(str(d).removeprefix("torch.") for d in WEIGHT_DTYPES)
            raise CheckpointError(f"{shorten(path)}: tensor {shorten(key, 60)} is "
                                  f"{str(t.dtype).removeprefix('torch.')}, expected floating-point weights ({names})")
        total += t.numel() * t.element_size()
        if total > budget:
            raise CheckpointError(
                f"{shorten(path)}: tensor {shorten(key, 60)} {tuple(t.shape)} (strides {t.stride()}) brings the "
                f"tensors' data to more than the file's {budget:,} bytes: expanded or overlapping views are refused")
    refuse_non_finite(state, path)


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
    """Load a Latent-CLIP from an official ``.pt`` checkpoint, a state dict or a safetensors export.

    ``config``: None (use the export's JSON, else infer from the tensors), a config name, a path to
    a JSON in the official schema, or a dict. ``vae_encoder=False`` drops a bundled VAE encoder
    (the pixel path) without reading it. Returns the model in eval mode.
    """
    target = available_device(device or "cpu")  # before anything is read
    state, stored = read_state_dict(path, vae_encoder=vae_encoder)
    if config is not None:
        cfg = resolve_config(config)
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
    _require_fit(model.state_dict(), state, f"{shorten(path)} does not match config {cfg.name or '(inferred)'}")
    model.load_state_dict(state, assign=True)
    n = cfg.text.context_length  # the causal mask is non-persistent: built on meta above
    model.attn_mask = torch.full((n, n), float("-inf")).triu_(1)
    model = model.to(device=target, dtype=resolve_dtype(dtype) or torch.float32)
    return model.eval().requires_grad_(False)


def _require_fit(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str,
                 error: type[Exception] = CheckpointError) -> None:
    """Every key of ``expected`` in ``state`` with its shape and nothing else, or ``error`` saying
    ``where`` and what differs."""
    wrong = [f"{shorten(k, 60)} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise error(one_line(f"{where}: shapes (checkpoint vs model) {wrong[:3]}"))
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        names = {what: [shorten(k, 60) for k in keys[:3]] + (["..."] if len(keys) > 3 else [])
                 for what, keys in (("missing", missing), ("unexpected", unexpected))}
        raise error(one_line(f"{where}: missing {names['missing']}, unexpected {names['unexpected']}"))


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


def refuse_non_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` if any floating-point tensor of ``state`` holds NaN or Inf."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{shorten(path)}: tensor {shorten(key, 60)} contains NaN or Inf; refusing "
                                  f"non-finite weights")


def atomic_write(path: Path, write: Callable[[Path], object], staging: Path | None = None) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the whole new one.
    ``tmp`` is ``<path>.tmp`` beside it, or a file in ``staging`` (same file system) to keep
    half-written files out of a folder that others list while it fills. The file gets the permissions the
    umask gives a new file, whatever ``write`` created it with (safetensors writes 0600: a ComfyUI running as
    another user could not read it). On failure the temporary is removed and the error says why (a full disk,
    by name)."""
    path = Path(path)
    tmp = Path(staging) / f"{path.name}.tmp" if staging is not None else path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        kept = " (the previous version is intact)" if path.exists() else ""
        raise OSError(f"could not write {path}: {_why_write_failed(err, path.parent, written)}{kept}") from None


def _umask() -> int:
    """The process's umask: Linux states it in /proc/self/status; elsewhere it is read by setting it, under a
    lock, which for that instant gives files other threads create the umask 022."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        with _UMASK_LOCK:
            mask = os.umask(0o022)
            os.umask(mask)
        return mask


_UMASK_LOCK = threading.Lock()


def _why_write_failed(err: BaseException, directory: Path, written: int) -> str:
    """torch's zip writer reports a full disk or a file size limit as "unexpected pos": read the cause
    off the disk and the process limits."""
    code = getattr(err, "errno", None)
    free = shutil.disk_usage(directory).free if directory.is_dir() else None
    if free is not None and (code == errno.ENOSPC or "No space left" in str(err) or free < 1 << 20):
        return f"no space left on its disk ({free:,} bytes free)"
    limit = _file_size_limit()
    if limit is not None and (code == errno.EFBIG or written >= limit):
        return f"the file reached the size limit (ulimit -f) of {limit:,} bytes"
    return _first_line(err)


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def convert(src: str | Path, dst: str | Path, config: Any = None, dtype: str | None = None,
            vae_encoder: bool = True) -> Path:
    """Official checkpoint (or any loadable weights) -> safetensors export at ``dst``."""
    model = load_model(src, config=config, vae_encoder=vae_encoder)
    return save_export(model, dst, dtype=dtype, vae_encoder=vae_encoder)
