"""ComfyUI <-> latent_clip glue: the model folder, the LATENT_CLIP wire, LATENT dicts, text inputs.

The LATENT_CLIP wire carries a ``comfy.model_patcher.ModelPatcher`` around a :class:`ModelHolder`,
so ComfyUI's model management moves the weights to the GPU when a node needs them
(:func:`model_of`) and offloads them when something else needs the memory.
"""
from __future__ import annotations

import functools
import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from torch import nn

from ..latent_clip import LatentCLIP, load_model
from ..latent_clip.factory import DTYPES
from ..latent_clip.zeroshot import parse_labels

FOLDER = "latent_clip"
# The tiny-world Latent-CLIP that ships with the pack, listed first so a newcomer's first graph runs.
EMBEDDED = "tinyworld (embedded demo)"
EMBEDDED_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "latent_clip", "assets", "tinyworld",
                             "latent_clip.safetensors")
EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}
DTYPE_CHOICES = ["auto", *DTYPES]
DEVICE_CHOICES = ["default", "cpu"]


def register_model_folder() -> None:
    """``models/latent_clip`` first, plus any ``latent_clip:`` entries of extra_model_paths.yaml
    (loaded before packs), listing only weight files."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


class ModelHolder(nn.Module):
    """What the patcher manages: model_management writes ``device`` and bookkeeping attributes
    on it, which :class:`LatentCLIP` (whose ``device`` is a property) must not receive."""

    def __init__(self, clip: LatentCLIP):
        super().__init__()
        self.clip = clip
        self.device = clip.device


def _devices(device: str) -> tuple[torch.device, torch.device]:
    if device == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    return mm.get_torch_device(), mm.text_encoder_offload_device()


def _dtype(dtype: str, load_device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    return torch.float32 if mm.is_device_cpu(load_device) else mm.text_encoder_dtype(load_device)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, stamp: tuple[float, int], dtype: str, device: str) -> comfy.model_patcher.ModelPatcher:
    load_device, offload_device = _devices(device)
    clip = load_model(path, device=offload_device, dtype=_dtype(dtype, load_device), vae_encoder=False)
    return comfy.model_patcher.ModelPatcher(ModelHolder(clip), load_device=load_device,
                                           offload_device=offload_device)


def model_choices() -> list[str]:
    """The loader's options: the embedded demo model (when shipped), then models/latent_clip files."""
    return ([EMBEDDED] if os.path.isfile(EMBEDDED_PATH) else []) + folder_paths.get_filename_list(FOLDER)


def default_model(choices: list[str]) -> str | None:
    """The loader's default: the first weights file of the latent_clip folders, the embedded demo only
    when there is none (it knows only its tiny world)."""
    return next((c for c in choices if c != EMBEDDED), choices[0] if choices else None)


def file_choice(name: str, files: list[str], folder: str, what: str) -> bool | str:
    """A file combo's check before the run (a V3 ``validate_inputs`` answer): True when ``name`` is
    one of ``files``, else one line saying what is missing where."""
    if name in files:
        return True
    where = ", ".join(folder_paths.get_folder_paths(folder))
    if not files:
        return f"no {what} in {where}: put the weights file there, then refresh the page (R)"
    return f"{what} {name!r} not found in {where}; choose one of: {', '.join(files[:10])}"


def load_patcher(name: str, dtype: str, device: str) -> comfy.model_patcher.ModelPatcher:
    """The file ``name`` from the latent_clip folders (or the embedded demo), wrapped for model
    management; cached by path, modification time, dtype and device."""
    path = EMBEDDED_PATH if name == EMBEDDED else folder_paths.get_full_path(FOLDER, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise FileNotFoundError(f"Latent-CLIP weights {name!r} not found in {folders}")
    stat = os.stat(path)
    return _load_cached(path, (stat.st_mtime, stat.st_size), dtype, device)


def model_of(patcher: comfy.model_patcher.ModelPatcher) -> LatentCLIP:
    """Load the weights onto ComfyUI's device (freeing others' memory if needed) and return the model."""
    mm.load_models_gpu([patcher], force_full_load=True)
    return patcher.model.clip


def samples(latent: dict) -> torch.Tensor:
    """A LATENT's raw VAE latents (B, C, H, W); raises a readable error on anything else."""
    z = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(z, torch.Tensor):
        raise ValueError("expected a LATENT (a dict with 'samples'); got something else")
    return z


def lines(text: str, what: str) -> list[str]:
    """Non-empty stripped lines of a multiline widget; raises when there are none."""
    out = parse_labels(text)
    if not out:
        raise ValueError(f"no {what} given: write one per line")
    return out


def chunked(fn, z: torch.Tensor, chunk: int, node_id: str | None = None) -> torch.Tensor:
    """``fn`` over ``z`` in chunks of ``chunk`` samples with a progress bar; checks for interrupts."""
    parts = z.split(chunk)
    bar = comfy.utils.ProgressBar(len(parts), node_id=node_id)
    out = []
    for part in parts:
        mm.throw_exception_if_processing_interrupted()
        out.append(fn(part))
        bar.update(1)
    return torch.cat(out)


def code_block(text: str) -> str:
    """``text`` as a Markdown code block: Preview Any renders its input as Markdown, and a code block
    keeps a report's line breaks and aligned columns."""
    return f"```\n{text}\n```"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(c).rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])
