"""ReNO's pixel rewards for the benchmarks (ReNO, arXiv 2406.04312, Eq. 6 and its ``rewards/``), loaded from
local files only.

- ``pixel_clip``: open_clip CLIP (``--pixel-clip``, ``--pixel-checkpoint``), ``100 - exp(logit_scale) cos``, w 0.01
- ``hps``: open_clip ViT-H-14 + ``HPS_v2.1_compressed.pt`` (``--hps-checkpoint``), ``1 - cos``, w 5.0
- ``pickscore``: transformers ``CLIPModel`` (``--pickscore`` folder), ``30 - exp(logit_scale) cos``, w 0.05
- ``--reward-module file.py[:function]`` (e.g. ImageReward, ``2 - score``): what it returns, w 1.0;
  the term is named after its function (``file.py:fn``) or its file

Every term reads the same image in [0, 1] (``(decode / 2 + 0.5).clamp(0, 1)``, one VAE decode per
iteration: :func:`latent_clip.rewards.on_decoded`), resized bicubic to the model's size,
centre-cropped and normalised as ReNO does. Models are frozen, in eval mode, in the pipeline dtype.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from latent_clip.pixel_clip import clip_normalise, load_pixel_clip, pixel_clip_spec, pixel_tokenizer
from latent_clip.rewards import ImageRewardFn, Prompts, clip_image_reward, clip_score_loss, hps_image_reward, \
    prompt_list

from .external import load_callable, split_spec

BUILTIN = ("latent_clip", "avoid", "pixel_clip", "hps", "pickscore", "total")  # names a reward module may not take


@dataclass(frozen=True)
class PixelRewardFactory:
    """One pixel reward of a run: its weight in the total, and how to make its loss for a prompt."""

    weight: float
    make: Callable[[str], ImageRewardFn]   # prompt -> loss on images in [0, 1] (B, 3, H, W) -> (B,)


def add_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--pixel-clip", help="open_clip model name / JSON config for a pixel CLIPScore reward")
    g.add_argument("--pixel-checkpoint", help="local weights of the pixel CLIP")
    g.add_argument("--pixel-weight", type=float, default=0.01)
    g.add_argument("--hps-checkpoint", help="HPSv2.1 weights (HPS_v2.1_compressed.pt: {'state_dict': ...})")
    g.add_argument("--hps-arch", default="ViT-H-14", help="open_clip name / JSON config of the HPS model")
    g.add_argument("--hps-weight", type=float, default=5.0)
    g.add_argument("--pickscore", help="local folder of yuvalkirstain/PickScore_v1 (config.json + weights)")
    g.add_argument("--pickscore-tokenizer", help="local tokenizer folder (default: --pickscore's; ReNO uses the "
                                                 "laion/CLIP-ViT-H-14-laion2B-s32B-b79K processor's)")
    g.add_argument("--pickscore-weight", type=float, default=0.05)
    g.add_argument("--reward-module", help="file.py[:function]: fn(images in [0, 1] (B,3,H,W), prompt) -> (B,) "
                                           "loss; without :function the file defines load(device) -> fn")
    g.add_argument("--reward-module-weight", type=float, default=1.0)


@dataclass(frozen=True)
class PixelRewardSettings:
    """The options of :func:`add_args` (defaults there): each reward's model files and weight (None / 0: unused)."""

    pixel_clip: str | None
    pixel_checkpoint: str | None
    pixel_weight: float
    hps_checkpoint: str | None
    hps_arch: str
    hps_weight: float
    pickscore: str | None
    pickscore_tokenizer: str | None
    pickscore_weight: float
    reward_module: str | None
    reward_module_weight: float


def requested(settings: PixelRewardSettings) -> list[str]:
    """The pixel terms ``settings`` ask for (a model path and a non-zero weight), known before loading anything:
    ``pixel_clip``, ``hps``, ``pickscore`` and ``reward_module``."""
    asked = {"pixel_clip": (settings.pixel_clip, settings.pixel_weight),
             "hps": (settings.hps_checkpoint, settings.hps_weight),
             "pickscore": (settings.pickscore, settings.pickscore_weight),
             "reward_module": (settings.reward_module, settings.reward_module_weight)}
    return [name for name, (source, weight) in asked.items() if source and weight]


def load(settings: PixelRewardSettings, device: torch.device, dtype: torch.dtype) -> dict[str, PixelRewardFactory]:
    """The :func:`requested` pixel rewards, loaded, by term name (a reward module's is its own)."""
    rewards, wanted = {}, requested(settings)
    if "pixel_clip" in wanted:
        model, tokenizer = load_open_clip(settings.pixel_clip, settings.pixel_checkpoint, device, dtype)
        rewards["pixel_clip"] = PixelRewardFactory(settings.pixel_weight, partial(clip_image_reward, model, tokenizer))
    if "hps" in wanted:
        model, tokenizer = load_open_clip(settings.hps_arch, settings.hps_checkpoint, device, dtype)
        rewards["hps"] = PixelRewardFactory(settings.hps_weight, partial(hps_image_reward, model, tokenizer))
    if "pickscore" in wanted:
        model, tokenizer = load_pickscore(settings.pickscore, settings.pickscore_tokenizer, device, dtype)
        rewards["pickscore"] = PixelRewardFactory(settings.pickscore_weight,
                                                  partial(pickscore_image_reward, model, tokenizer))
    if "reward_module" in wanted:
        name, fn = load_reward_module(settings.reward_module, device)
        rewards[name] = PixelRewardFactory(settings.reward_module_weight, partial(module_image_reward, fn, name=name))
    return rewards


def _projected(out) -> torch.Tensor:
    # transformers 5 returns the tower's output with the projection in pooler_output, 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def pickscore_image_reward(model, tokenizer, prompt: Prompts) -> ImageRewardFn:
    """PickScore's loss ``30 - exp(logit_scale) * cos`` on images in [0, 1] (B, 3, H, W) -> (B,)
    for a transformers ``CLIPModel`` with PickScore weights and its tokenizer, resized to the vision
    tower's size with CLIP's mean/std; the prompt (77 tokens at most, as ReNO) is encoded once, here."""
    param = next(model.parameters())
    size = model.config.vision_config.image_size
    tokens = tokenizer(prompt_list(prompt), return_tensors="pt", padding=True, max_length=77,
                       truncation=True).to(param.device)
    with torch.inference_mode(False), torch.no_grad():
        text = F.normalize(_projected(model.get_text_features(**tokens)).float(), dim=-1)

    def loss(images: torch.Tensor) -> torch.Tensor:
        x = clip_normalise(images, size).to(device=param.device, dtype=param.dtype)
        features = F.normalize(_projected(model.get_image_features(pixel_values=x)).float(), dim=-1)
        return clip_score_loss(features, text, model.logit_scale.float(), offset=30.0)

    return loss


def load_open_clip(arch: str, checkpoint: str | None, device, dtype: torch.dtype):
    """(:func:`latent_clip.pixel_clip.load_pixel_clip` of ``arch`` (a name or a JSON config) + ``checkpoint``
    on ``device`` in ``dtype``, its tokenizer)."""
    spec = pixel_clip_spec(arch)
    model = load_pixel_clip(spec, checkpoint, device, dtype)
    return model, pixel_tokenizer(spec, model)


def load_pickscore(folder: str, tokenizer_folder: str | None, device, dtype: torch.dtype):
    """(transformers ``CLIPModel``, tokenizer) from local folders only (``local_files_only``)."""
    from transformers import AutoTokenizer, CLIPModel

    tokenizer_folder = tokenizer_folder or folder
    for path in (folder, tokenizer_folder):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"PickScore: no such folder {path} (hub ids are not fetched; download "
                                    "yuvalkirstain/PickScore_v1 and the laion ViT-H-14 processor first)")
    # checked here: transformers 5 builds an empty-vocabulary tokenizer from a folder without one
    if not any((Path(tokenizer_folder) / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"PickScore: no tokenizer in {tokenizer_folder} (tokenizer.json or vocab.json); pass "
                         "--pickscore-tokenizer, the laion/CLIP-ViT-H-14-laion2B-s32B-b79K processor folder")
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_reward_module(spec: str, device) -> tuple[str, Callable]:
    """``--reward-module`` -> (term name, ``fn(images, prompt) -> (B,)``). ``file.py:function``
    names the loss itself; a bare ``file.py`` (or module) must define ``load(device) -> fn``,
    called once, here."""
    module, name = split_spec(spec)
    term = name or Path(module.removesuffix(".py")).name.rsplit(".", 1)[-1]
    if term in BUILTIN:
        raise ValueError(f"--reward-module {spec!r}: term name {term!r} is taken by a built-in reward; rename it")
    fn = load_callable(spec, "--reward-module", default="load")
    if name is None:
        fn = fn(device)
        if not callable(fn):
            raise ValueError(f"--reward-module {spec!r}: load(device) must return fn(images, prompt), got {fn!r}")
    return term, fn


def module_image_reward(fn: Callable, prompt: str, name: str) -> ImageRewardFn:
    """``fn(images, prompt)`` bound to ``prompt``; its output must be one loss per image."""
    def loss(images: torch.Tensor) -> torch.Tensor:
        out = fn(images, prompt)
        if not isinstance(out, torch.Tensor) or out.shape != images.shape[:1]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"reward module {name!r} must return a ({images.shape[0]},) tensor of losses "
                             f"(one per image), got {shape}")
        return out
    return loss
