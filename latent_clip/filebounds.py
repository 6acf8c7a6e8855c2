"""What a file may ask for before anything in it is parsed: the one place where the cost of reading a
weights file, a sidecar or a dataset file is bounded.

Every check here reads a few bytes or a directory (never the content it describes) and raises
:class:`FileLimitError`, one line naming the file, what it asks for and the limit. Each limit is far
above what a real file needs (the reason is written beside it) and low enough that a file within it is
read in well under a second:

* :func:`read_bounded`: a text file's bytes, at most ``limit`` of them, however large the file says it is
  (``/proc`` files report size 0; a symlink to ``/dev/zero`` has no end);
* :func:`check_safetensors_header`: the header's length (its first 8 bytes) before the header is read, then
  its tensor count and key lengths before any tensor is;
* :func:`check_torch_zip`: a ``torch.save`` zip's member count, its pickle's size and every member's
  uncompressed size, from the zip directory, before anything is inflated or unpickled; a legacy (non-zip)
  file is refused, since nothing bounds its pickle before it is run.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from .fields import shorten

# A Latent-CLIP B/8 training checkpoint holds 1,322 tensors (410 weights with the VAE encoder, Adam's two moments
# and step for each of the 302 trainable ones; tests/data/latent-clip-layout), a ViT-H open_clip state dict ~600.
# torch.load costs ~90 us per stored tensor: 8,192 load in under a second.
MAX_TENSORS = 8192
# The longest key of any known checkpoint is under 100 characters ("module.visual.vae_encoder.down_blocks.0.
# resnets.0.conv_shortcut.weight"); a key is a module path, never text.
MAX_KEY_CHARS = 1024
# A header lists each tensor's name, dtype, shape and offsets (~100 bytes), plus string metadata: a dataset shard
# of 10,000 rows carries its captions and keys there (1 MB with 100-character captions, 10 MB with 1,000). The
# tensor count is read off the raw header before it is parsed; a full header costs ~3x its size to parse.
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# data.pkl of a B/8 training checkpoint with its optimizer is 126 KB (tensor records, keys, param groups); 512 KB
# also bounds the tensors a pickle can describe as views of one stored tensor (~77 bytes each: 0.4-0.5 s to load).
MAX_PICKLE_BYTES = 1 << 19
TENSOR_ENTRY = b'"data_offsets"'  # once per tensor in a safetensors header (inside a JSON string it is escaped)
ZIP_MAGIC = b"PK\x03\x04"
SAFETENSORS_LENGTH_BYTES = 8


class FileLimitError(ValueError):
    """A file asks for more than a limit of this module, or is in a format that cannot be bounded."""


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``: at most ``limit``, read as a stream (``stat`` is not trusted), else
    :class:`FileLimitError` naming ``what`` and the limit."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileLimitError(f"{shorten(path)}: {what} is more than {limit:,} bytes (the limit for it)")
    return data


def check_safetensors_header(path: Path, max_tensors: int = MAX_TENSORS,
                             max_header: int = MAX_SAFETENSORS_HEADER_BYTES) -> dict:
    """The parsed header of a safetensors file (``{key: {dtype, shape, data_offsets}}``, plus
    ``__metadata__``) once its length, tensor count and key lengths are within the limits."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(SAFETENSORS_LENGTH_BYTES), "little")
        if length > max_header:
            raise FileLimitError(f"{shorten(path)}: safetensors header of {length:,} bytes, more than the "
                                 f"{max_header:,} a weights file or shard needs")
        raw = f.read(length)
    check_keys((), raw.count(TENSOR_ENTRY), path, max_tensors)  # counted before the header is parsed
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise FileLimitError(f"{shorten(path)}: not a valid safetensors file (header is not JSON: "
                             f"{shorten(str(err), 80)})") from None
    if not isinstance(header, dict):
        raise FileLimitError(f"{shorten(path)}: not a valid safetensors file (header is not a JSON object)")
    check_keys((k for k in header if k != "__metadata__"), len(header) - ("__metadata__" in header), path,
               max_tensors)
    return header


def check_keys(keys, count: int, path: Path, max_tensors: int = MAX_TENSORS) -> None:
    """``count`` tensors at most ``max_tensors``, each key a string of at most :data:`MAX_KEY_CHARS`."""
    if count > max_tensors:
        raise FileLimitError(f"{shorten(path)}: {count:,} tensors, more than the {max_tensors:,} allowed "
                             f"(a Latent-CLIP checkpoint with its optimizer holds 1,322)")
    for key in keys:
        if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
            raise FileLimitError(f"{shorten(path)}: a tensor name of {len(key):,} characters "
                                 f"({shorten(key, 40)!r}), more than {MAX_KEY_CHARS:,}: expected parameter names")


def check_torch_zip(source: Path | bytes, name: object = None, max_tensors: int = MAX_TENSORS) -> None:
    """A ``torch.save`` file (a path, or its bytes named ``name``) whose zip directory asks for little: at
    most ``max_tensors`` stored tensors (a member each, plus a few records), a ``data.pkl`` of at most
    :data:`MAX_PICKLE_BYTES` and members that do not inflate beyond the file's size. A legacy (non-zip)
    file is refused."""
    data = source if isinstance(source, bytes) else None
    name = shorten(name if name is not None else source)
    with (io.BytesIO(data) if data is not None else open(source, "rb")) as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise FileLimitError(f"{name}: not a zip-format PyTorch file (torch.save's format since torch 1.6; "
                                 f"the legacy format is refused: its pickle cannot be bounded before it runs); "
                                 f"re-save it with torch.save or convert it to safetensors")
        size = f.seek(0, io.SEEK_END)
        # the end record's member count, before the directory is parsed (parsing 300,000 entries takes 1 s);
        # zipfile's reader of it is private but has not changed since Python 2
        end = zipfile._EndRecData(f)
        records = max_tensors + 16  # data.pkl, version, byteorder, serialization id, ...
        if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > records:
            raise FileLimitError(f"{name}: {end[zipfile._ECD_ENTRIES_TOTAL]:,} zip members, more than the "
                                 f"{records:,} of {max_tensors:,} tensors a model checkpoint holds")
        try:
            with zipfile.ZipFile(f) as z:
                members = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise FileLimitError(f"cannot read {name}: truncated or not a PyTorch checkpoint (zip directory: "
                                 f"{shorten(str(err), 80)})") from None
    if len(members) > records:  # an end record that understates its directory
        raise FileLimitError(f"{name}: {len(members):,} zip members, more than the {records:,} of "
                             f"{max_tensors:,} tensors a model checkpoint holds")
    for m in members:
        if m.filename.endswith("data.pkl") and m.file_size > MAX_PICKLE_BYTES:
            raise FileLimitError(f"{name}: its pickle {shorten(m.filename, 60)} is {m.file_size:,} bytes "
                                 f"uncompressed, more than the {MAX_PICKLE_BYTES:,} a checkpoint's needs")
    inflated = sum(m.file_size for m in members)
    if inflated > size:  # torch.save stores members uncompressed: this is a compression bomb
        worst = max(members, key=lambda m: m.file_size - m.compress_size)
        raise FileLimitError(f"{name}: its zip members inflate to {inflated:,} bytes from a {size:,}-byte file "
                             f"({shorten(worst.filename, 60)}: {worst.compress_size:,} -> {worst.file_size:,}); "
                             f"torch.save stores members uncompressed")
