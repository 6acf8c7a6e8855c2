"""Reading weights files safely: the one path by which every weights file of the pack is read.

Formats, recognised by content:

* official open_clip training checkpoints (``epoch_34.pt``): ``{epoch, name, state_dict, optimizer}``,
  keys prefixed ``module.``; read with ``torch.load(weights_only=True, mmap=True)`` under a minimal
  allow-list, so nothing pickled is executed and the optimizer state / VAE encoder are never read when not
  wanted;
* bare state dicts in ``.pt``/``.pth``/``.bin``/``.ckpt`` files (same rules);
* safetensors files, with an export's JSON sidecar (``{"model_cfg": ...}``) beside them.

Every tensor is checked before use: the cost of anything a file asks for is bounded by its size.
"""
from __future__ import annotations

import io
import json
import pickle
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open

from .fields import error_summary, one_line, shorten
from .filebounds import FileLimitError, check_keys, check_safetensors_header, check_torch_zip, read_bounded

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

VAE_PREFIXES = ("visual.vae_encoder.", "visual.vae_quant_conv.")

STRIP_PREFIXES = re.compile(r"^(?:module\.|_orig_mod\.)+")

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
                              f"({error_summary(err)})") from None

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
                                  f"({error_summary(err)})") from None
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
    require_fit(model.state_dict(), state,
                 f"{shorten(path)} does not fit {shorten(label or type(model).__name__, 60)}", ValueError)
    model.load_state_dict(state)
    return model

def require_fit(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str,
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

def refuse_non_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` if any floating-point tensor of ``state`` holds NaN or Inf."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{shorten(path)}: tensor {shorten(key, 60)} contains NaN or Inf; refusing "
                                  f"non-finite weights")
