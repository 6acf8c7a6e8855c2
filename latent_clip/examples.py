"""The example latents that ship with the pack: tiny-world latents with their captions, so a first graph runs
with nothing downloaded and its answers can be checked (``python -m train tinyworld --write-examples``
writes them with the embedded VAE).

The file is one safetensors file: the tensor ``latents`` (N, C, H, W), raw VAE latents of ``family`` in
fp32, and in its metadata (JSON strings) each sample's ``captions`` and ``answers`` (the label its caption
names), the ``labels`` to classify them with and the prompt ``templates`` that classify them well.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .config import DEMO_DIR, get_latent_family
from .fields import MAX_TEMPLATES, check_template, check_texts, shorten
from .filebounds import SAFETENSORS_LENGTH_BYTES, FileLimitError, read_bounded
from .files import atomic_write

EXAMPLES_FILE = DEMO_DIR / "examples.safetensors"
# The shipped file holds 18 latents of 8x8x4 fp32 (18 KB) and their captions: 64 KB leaves room for a few times
# more, and is read and checked in milliseconds.
MAX_EXAMPLES_BYTES = 64 << 10
MAX_LABELS = 64  # a label list a person reads on the canvas; the shipped one has 6
TEXT_FIELDS = ("captions", "answers", "labels", "templates")


@dataclass(frozen=True)
class Examples:
    """``latents`` (N, C, H, W) raw fp32 latents of the latent family ``family``; ``captions[i]`` describes
    latent i and names the label ``answers[i]``, one of ``labels``; ``templates`` (each with ``{}``) are
    the zero-shot prompts the labels are classified with."""

    latents: torch.Tensor
    captions: list[str]
    answers: list[str]
    labels: list[str]
    templates: list[str]
    family: str


def example_latents(path: str | Path = EXAMPLES_FILE) -> Examples:
    """The examples in ``path`` (the shipped file by default), read within :data:`MAX_EXAMPLES_BYTES` and
    checked (:func:`check_examples`); ``ValueError`` (one line naming the file) when anything is off."""
    path = Path(path)
    data = read_bounded(path, MAX_EXAMPLES_BYTES, "the example latents file")
    try:
        length = int.from_bytes(data[:SAFETENSORS_LENGTH_BYTES], "little")
        metadata = json.loads(data[SAFETENSORS_LENGTH_BYTES:SAFETENSORS_LENGTH_BYTES + length]).get("__metadata__")
        tensors = load_safetensors(data)
        texts = {name: json.loads(metadata[name]) for name in TEXT_FIELDS}
        examples = Examples(tensors["latents"], **texts, family=metadata["family"])
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise FileLimitError(f"{shorten(path)}: not an example latents file (expected the tensor 'latents' and "
                             f"metadata {', '.join(TEXT_FIELDS)}, family; {shorten(str(err), 80)})") from None
    return check_examples(examples, path)


def check_examples(examples: Examples, where: object) -> Examples:
    """``examples`` when they hold together: fp32 finite latents with the family's channels, one caption and
    one answer per latent, answers among the labels, every text within the text bounds; else ``ValueError``."""
    for name in TEXT_FIELDS:
        texts = getattr(examples, name)
        if not isinstance(texts, list):
            raise ValueError(f"{shorten(where)}: {name} must be a list of texts, got {type(texts).__name__}")
        check_texts(texts, f"{shorten(where)}: {name}")
    z, n = examples.latents, len(examples.captions)
    channels = get_latent_family(examples.family).channels
    if z.dtype != torch.float32 or z.ndim != 4 or z.shape[1] != channels or not len(z) == n == len(examples.answers):
        raise ValueError(f"{shorten(where)}: latents {z.dtype} {tuple(z.shape)} with {n} captions and "
                         f"{len(examples.answers)} answers; expected float32 (N, {channels}, H, W) latents of "
                         f"{examples.family!r} with one caption and one answer each")
    if not torch.isfinite(z).all():
        raise ValueError(f"{shorten(where)}: the example latents hold NaN or Inf")
    if not 0 < len(examples.labels) <= MAX_LABELS or not 0 < len(examples.templates) <= MAX_TEMPLATES:
        raise ValueError(f"{shorten(where)}: {len(examples.labels)} labels and {len(examples.templates)} templates; "
                         f"expected 1 to {MAX_LABELS} and 1 to {MAX_TEMPLATES}")
    for template in examples.templates:
        check_template(template)
    unknown = sorted(set(examples.answers) - set(examples.labels))
    if unknown:
        raise ValueError(f"{shorten(where)}: answers {shorten(unknown, 80)} are not among the labels "
                         f"{shorten(examples.labels, 80)}")
    return examples


def save_examples(examples: Examples, path: str | Path = EXAMPLES_FILE) -> None:
    """Write ``examples`` (checked first) to ``path`` atomically, with the umask's permissions."""
    check_examples(examples, path)
    metadata = {name: json.dumps(getattr(examples, name)) for name in TEXT_FIELDS} | {"family": examples.family}
    tensors = {"latents": examples.latents.detach().float().contiguous().cpu()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
