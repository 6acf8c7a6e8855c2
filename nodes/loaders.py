"""Latent-CLIP (and open_clip) weights for the nodes: model folders, loading, caching, model
management, the pairing rule, and the loader node (models/latent_clip -> LATENT_CLIP wire).

The LATENT_CLIP wire carries a ``comfy.model_patcher.ModelPatcher`` around a :class:`ModelHolder`,
so ComfyUI's model management moves the weights to the GPU when a node needs them
(:func:`model_of`) and offloads them when something else needs the memory.
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io
from torch import nn

from ..latent_clip.config import DEMO_WEIGHTS
from ..latent_clip.contract import check_family
from ..latent_clip.factory import DTYPES, load_model
from ..latent_clip.pixel_clip import load_pixel_clip, pixel_tokenizer
from ._autograd import autograd_safe_
from ._schema import advanced, search_aliases
from ._ui import NodeText

if TYPE_CHECKING:  # the model module imports open_clip: the pack imports it when a model loads
    from ..latent_clip.model import LatentCLIP

FOLDER = "latent_clip"
OPEN_CLIP_FOLDER = "open_clip"  # pixel CLIP weights of the comparison reward
# The tiny-world Latent-CLIP that ships with the pack, listed first so a newcomer's first graph runs.
EMBEDDED = "tinyworld (embedded demo)"
EMBEDDED_PATH = str(DEMO_WEIGHTS)
EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}


def register_model_folder(name: str = FOLDER, extensions=EXTENSIONS) -> None:
    """``models/<name>`` first, plus any ``<name>:`` entries of extra_model_paths.yaml (loaded
    before packs), listing files with ``extensions`` (besides those another pack registered)."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=True)
    paths, known = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, known | set(extensions))


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
        raise FileNotFoundError(file_choice(name, model_choices(), FOLDER, "Latent-CLIP weights"))
    stat = os.stat(path)
    return _load_cached(path, (stat.st_mtime, stat.st_size), dtype, device)


def model_of(patcher: comfy.model_patcher.ModelPatcher, autograd: bool = False) -> LatentCLIP:
    """Load the weights onto ComfyUI's device (freeing others' memory if needed) and return the
    model; with ``autograd``, its weights made usable by autograd in place (``autograd_safe_``)."""
    mm.load_models_gpu([patcher], force_full_load=True)
    if autograd:
        autograd_safe_(patcher.model.clip)
    return patcher.model.clip


def load_open_clip(arch: str, path: str) -> tuple[nn.Module, object]:
    """An open_clip model from a local file through the pack's bounded loader (never downloads, never
    open_clip's own loader, which runs under ComfyUI's process-wide allow-list), as normal tensors on
    ComfyUI's device, and its tokenizer."""
    device = mm.get_torch_device()
    dtype = torch.float32 if mm.is_device_cpu(device) else torch.float16
    with torch.inference_mode(False):
        model = load_pixel_clip(arch, path, device, dtype)
    return model, pixel_tokenizer(arch, model)


OVERRIDE = "allow_family_mismatch"
OVERRIDE_TIP = ("Run even when the Latent-CLIP was trained on another VAE's latents than the diffusion model makes "
                "(an experiment: its rewards then read an unknown latent space). Off: such a pairing is an error.")


def override_input() -> io.Boolean.Input:
    return advanced(io.Boolean.Input(OVERRIDE, default=False, optional=True, tooltip=OVERRIDE_TIP))


def check_pairing(latent_clip, latent_format, allow_mismatch: bool, text: NodeText) -> None:
    """The pack's pairing rule (:func:`latent_clip.check_family`) between a LATENT_CLIP wire and a
    ComfyUI model's ``latent_format``: raises on a mismatch; an allowed one becomes a node warning."""
    family = latent_clip.model.clip.config.vision.family
    message = check_family(family, latent_format.latent_channels, latent_format.scale_factor,
                           getattr(latent_format, "shift_factor", 0.0), allow_mismatch=allow_mismatch,
                           override=OVERRIDE)
    if message:
        text.warn(f"Latent-CLIP: {message}")


def paired_model(latent_clip, latent_format, allow_mismatch: bool, text: NodeText) -> LatentCLIP:
    """The wire's Latent-CLIP for a reward on ``latent_format``'s latents: pairing checked
    (:func:`check_pairing`), weights usable with gradients (:func:`model_of` with ``autograd``)."""
    check_pairing(latent_clip, latent_format, allow_mismatch, text)
    return model_of(latent_clip, autograd=True)


LatentClip = io.Custom("LATENT_CLIP")


class LatentCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = model_choices()
        return io.Schema(
            node_id="LatentCLIPLoader", display_name="Load Latent-CLIP", category="latent_clip/loaders",
            **search_aliases("latent clip", "clip loader", "load clip model"),
            description="Loads Latent-CLIP weights (official .pt or safetensors export) from models/latent_clip.",
            inputs=[
                io.Combo.Input("model_name", options=choices, default=default_model(choices),
                               tooltip="Weights file in models/latent_clip (or a latent_clip: folder of "
                                       "extra_model_paths.yaml): an official epoch_*.pt or a .safetensors export. "
                                       "'tinyworld (embedded demo)' is the small model trained on the pack's "
                                       "procedural shapes world: it runs anywhere, but only knows that world "
                                       "(the default only while the folder holds no weights)."),
                advanced(io.Combo.Input("dtype", options=["auto", *DTYPES], default="auto",
                                        tooltip="Weight precision. auto: fp32 on CPU, ComfyUI's text-encoder dtype "
                                                "on GPU.")),
                advanced(io.Combo.Input("device", options=["default", "cpu"], default="default",
                                        tooltip="default: ComfyUI's device, offloaded when others need the memory. "
                                                "cpu: always run on the CPU.")),
            ],
            outputs=[LatentClip.Output(display_name="LATENT_CLIP")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        return file_choice(model_name, model_choices(), FOLDER, "Latent-CLIP weights")

    @classmethod
    def execute(cls, model_name: str, dtype: str, device: str) -> io.NodeOutput:
        return io.NodeOutput(load_patcher(model_name, dtype, device))


NODES = [LatentCLIPLoader]
