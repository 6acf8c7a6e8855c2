"""The models of one ReNO iteration, shared by the ReNO benches (SD-Turbo, SDXL-Turbo, ComfyUI).

Built from their configs at true size with random weights (no downloads), fp32, eval, frozen: diffusers
``UNet2DConditionModel`` (SD-Turbo: the SD-2.1-base config, 866 M params; SDXL-Turbo: SDXL's, 2,567.5 M,
``text_time`` conditioning), the SD/SDXL VAE decoder (one architecture; the scale from the latent-family
registry), pixel CLIPs from :func:`latent_clip.pixel_clip.build_pixel_clip` (ViT-B-32, the paper's baseline,
and ViT-L-14; text towers dropped once the prompt is encoded) and Latent-ViT-B-8-512.

Where the weights live (:func:`place_`): on the CPU every parameter is a view of one shared mapping of an
unlinked temporary file on disk, page cache that the kernel writes back and drops under pressure rather than
anonymous memory (a fp32 SDXL UNet is 9.6 GiB; the machine has no swap). The UNet is built on the meta device
and filled in that mapping by :func:`random_init_`, so it never exists in anonymous memory. On CUDA it is
materialised on the device. On ``meta`` nothing is materialised: that build is for counting FLOPs.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from latent_clip import LatentCLIP, get_latent_family, get_model_config, scaled_to_raw
from latent_clip.pixel_clip import (build_pixel_clip, clip_normalise, pixel_clip_config, pixel_preprocess,
                                   pixel_tokenizer)
from latent_clip.rewards import latent_alignment, pixel_alignment

PROMPT = "a photo of an astronaut riding a horse"
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SDXL_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# SDXL's conditioning at a toy width, for tests of the benches only (text_time input: 1280 + 6 x 8)
TINY_SDXL_UNET = dict(
    SDXL_UNET, block_out_channels=(32, 64), attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1),
    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=1328)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
# the reward paths: key -> (label, pixel CLIP architecture or None for Latent-CLIP)
PATHS = {"latent": ("latent: Latent-ViT-B/8", None),
         "pixel_b32": ("pixel: decode + ViT-B/32 (the paper's baseline)", "ViT-B-32"),
         "pixel_l14": ("pixel: decode + ViT-L/14", "ViT-L-14")}


@dataclass(frozen=True)
class Turbo:
    """A one-step model: its latent family, UNet config, text-context width and pooled-text width (SDXL)."""

    family: str
    unet: dict
    context_dim: int
    pooled_dim: int | None = None


TURBOS = {"sd-turbo": Turbo("sd15", SD21_BASE_UNET, 1024), "sdxl-turbo": Turbo("sdxl", SDXL_UNET, 2048, 1280)}


@dataclass
class Pipeline:
    """``generate``: noise -> raw latents (one Turbo step); ``rewards``: path key -> (raw latents -> (B,) loss);
    ``decode``: raw latents -> images; ``modules``: what holds weights, by name."""

    generate: Callable[[torch.Tensor], torch.Tensor]
    rewards: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    decode: Callable[[torch.Tensor], torch.Tensor]
    modules: dict[str, nn.Module] = field(default_factory=dict)


def frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def random_init_(name: str, t: torch.Tensor) -> torch.Tensor:
    """The benches' random weights: N(0, 1/fan_in) for matrices and kernels, 1 for norm weights, 0 otherwise."""
    with torch.no_grad():
        if t.ndim > 1:
            return t.normal_(0.0, t[0].numel() ** -0.5)
        return t.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)


def _mount_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (Linux /proc/mounts)."""
    real, best = os.path.realpath(path), ("", "")
    with open("/proc/mounts") as f:
        for line in f:
            point, kind = line.split()[1:3]
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
                best = (point, kind)
    return best[1]


def file_backed_storage(nbytes: int) -> torch.UntypedStorage:
    """``nbytes`` of a shared mapping of a new, already unlinked file in the temporary directory (a disk, not
    tmpfs: tmpfs pages cannot be dropped without swap)."""
    folder = tempfile.gettempdir()
    if _mount_type(folder) in ("tmpfs", "ramfs"):
        raise RuntimeError(f"file-backed weights need a disk, but {folder} is {_mount_type(folder)}: set TMPDIR to "
                           "a folder on disk")
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    if free < nbytes + 2 ** 31:
        raise RuntimeError(f"file-backed weights need {nbytes / 2 ** 30:.1f} GiB (+2 GiB margin) in {folder}, "
                           f"which has {free / 2 ** 30:.1f} GiB free: set TMPDIR to a folder with room")
    fd, path = tempfile.mkstemp(prefix="reno-bench-weights-", dir=folder)
    os.close(fd)
    try:
        return torch.UntypedStorage.from_file(path, shared=True, nbytes=nbytes)
    finally:
        os.unlink(path)


def place_(module: nn.Module, device: torch.device, init: bool = False) -> nn.Module:
    """``module`` on ``device`` (its parameters on the meta device and filled by :func:`random_init_` when
    ``init``); on the CPU its parameters become views of one :func:`file_backed_storage` (fp32 only)."""
    if device.type == "meta":
        return module.to(device)
    if device.type != "cpu":
        module = module.to_empty(device=device) if init else module.to(device)
        for name, p in module.named_parameters() if init else ():
            random_init_(name, p)
        return module
    params = list(module.named_parameters())
    if any(p.dtype != torch.float32 for _, p in params):
        raise ValueError("file-backed weights are fp32 only")
    flat = torch.empty(0).set_(file_backed_storage(4 * sum(p.numel() for _, p in params)))
    offset = 0
    for name, p in params:
        view = flat[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()
        random_init_(name, view) if init else view.copy_(p.detach())
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._parameters[leaf] = nn.Parameter(view, requires_grad=False)
    return module


def turbo_one_step(unet, family, **conditioning):
    """SD/SDXL-Turbo one step at t=999 (eps prediction): noise -> x0 in UNet space -> raw VAE latents."""
    from diffusers import DDPMScheduler

    alpha_bar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[999]

    def generate(noise):
        eps = unet(noise, 999, **conditioning).sample
        return scaled_to_raw((noise - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), family)
    return generate


def _conditioning(turbo: Turbo, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {"encoder_hidden_states": torch.randn(1, 77, turbo.context_dim, generator=g).to(device)}
    if turbo.pooled_dim:
        out["added_cond_kwargs"] = {"text_embeds": torch.randn(1, turbo.pooled_dim, generator=g).to(device),
                                    "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device,
                                                             dtype=torch.float32)}
    return out


def _reward(key: str, decode, device: torch.device) -> tuple[Callable, nn.Module]:
    """The reward of path ``key`` (see :data:`PATHS`) and the module holding its weights. On ``meta`` (for
    counting FLOPs, where a prompt cannot be tokenised) the reward's towers on the latents, the prompt's features
    left out: the cosine to them and the normalisations are elementwise, which FlopCounterMode does not count."""
    arch, meta = PATHS[key][1], device.type == "meta"
    with torch.device("meta") if meta else contextlib.nullcontext():  # on meta: no weights in memory at all
        model = LatentCLIP(get_model_config("Latent-ViT-B-8-512")) if arch is None else (
            build_pixel_clip(pixel_clip_config(arch)) if meta else build_pixel_clip(arch))
    if arch is None:
        lclip = place_(frozen(model), device)
        if meta:
            return lambda latents: lclip.encode_latents(latents).sum(-1), lclip.visual
        return latent_alignment(lclip, PROMPT), lclip.visual
    clip = place_(frozen(model), device)
    if meta:
        return lambda latents: clip.encode_image(clip_normalise(decode(latents), *pixel_preprocess(clip))).sum(-1), clip
    reward = pixel_alignment(clip, pixel_tokenizer(arch, clip), PROMPT, decode)
    del clip.transformer, clip.token_embedding  # the prompt is encoded; not part of an iteration
    return reward, clip.visual


def build(model: str, size: int, device: str, paths=tuple(PATHS), tiny_unet: bool = False) -> Pipeline:
    """The one-step generator of ``model`` (a :data:`TURBOS` key) at ``size`` px, the VAE decoder and the
    rewards of ``paths`` on ``device`` (``meta``: for counting FLOPs). ``tiny_unet``: tests only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    turbo, dev = TURBOS[model], torch.device(device)
    family = get_latent_family(turbo.family)  # the VAE's scale comes from the registry, not code
    torch.manual_seed(0)
    with torch.device("meta"):
        unet = frozen(UNet2DConditionModel(**(TINY_SDXL_UNET if tiny_unet else turbo.unet)))
    place_(unet, dev, init=True)
    with torch.device("meta") if dev.type == "meta" else contextlib.nullcontext():
        vae = frozen(AutoencoderKL(**SD_VAE, scaling_factor=family.scaling_factor))
    del vae.encoder, vae.quant_conv  # not part of an iteration
    place_(vae, dev)

    def decode(raw):
        return vae.decode(raw).sample

    pipeline = Pipeline(turbo_one_step(unet, family, **_conditioning(turbo, size, dev)), {}, decode,
                        {"unet": unet, "vae decoder": vae})
    for key in paths:
        pipeline.rewards[key], pipeline.modules[key] = _reward(key, decode, dev)
    return pipeline


def params_m(pipeline: Pipeline) -> dict[str, float]:
    """Millions of parameters per module of ``pipeline``."""
    return {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in pipeline.modules.items()}
