"""Latent-CLIP: an open_clip CLIP whose image tower reads VAE latents.

Built from open_clip's own ``VisionTransformer`` and text tower, with the official module
layout (``visual.latent_vit.*``, optional ``visual.vae_encoder.*`` / ``visual.vae_quant_conv.*``,
text tower at top level), so official state dicts load without renaming.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import tokenize
from open_clip.transformer import VisionTransformer, text_global_pool
from timm.layers import resample_abs_pos_embed
from torch import nn

from .config import ModelConfig, VisionConfig
from .contract import ResizePolicy, check_latents, fit_latents
from .fields import check_texts
from .textcache import TEXT_CACHE

DEFAULT_CHUNK = 64
# progress(done, total) in samples, after each chunk of a batched call; raising from it stops the call
Progress = Callable[[int, int], None]


class LatentViT(VisionTransformer):
    """open_clip's ViT with a C-channel patch embedding. Inputs whose patch grid differs from the
    trained one get a bicubically resampled positional embedding."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__(image_size=cfg.latent_size, patch_size=cfg.patch_size, width=cfg.width,
                         layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, output_dim=embed_dim)
        self.conv1 = nn.Conv2d(cfg.latent_n_channels, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        if grid == tuple(self.grid_size):
            return super()._embeds(x)
        pos = resample_abs_pos_embed(self.positional_embedding[None], list(grid), list(self.grid_size))[0]
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))


def build_vae_encoder(cfg: VisionConfig) -> tuple[nn.Module, nn.Module]:
    """The family's diffusers VAE encoder and quant conv (identity when the family has none)."""
    from diffusers.models.autoencoders.vae import Encoder

    family = cfg.family
    if family.encoder is None:
        raise ValueError(f"no VAE encoder architecture is known for latent family {family.name!r}")
    arch = dict(family.encoder)
    blocks = tuple(arch["block_out_channels"])
    encoder = Encoder(in_channels=3, out_channels=family.channels, block_out_channels=blocks,
                      down_block_types=("DownEncoderBlock2D",) * len(blocks),
                      layers_per_block=arch["layers_per_block"], norm_num_groups=arch["norm_num_groups"],
                      act_fn="silu", double_z=True)
    moments = 2 * family.channels
    quant = nn.Conv2d(moments, moments, 1) if arch["use_quant_conv"] else nn.Identity()
    return encoder.requires_grad_(False).eval(), quant.requires_grad_(False).eval()


class LatentVisionTower(nn.Module):
    """``latent_vit`` on raw latents; optional frozen VAE encoder for the pixel path."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, vae_encoder: bool = False):
        super().__init__()
        self.latent_vit = LatentViT(cfg, embed_dim)
        if vae_encoder:
            self.vae_encoder, self.vae_quant_conv = build_vae_encoder(cfg)

    @property
    def has_vae_encoder(self) -> bool:
        return hasattr(self, "vae_encoder")

    def train(self, mode: bool = True) -> "LatentVisionTower":
        super().train(mode)
        if self.has_vae_encoder:
            self.vae_encoder.eval()
            self.vae_quant_conv.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.latent_vit.set_grad_checkpointing(enable)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.latent_vit(latents)

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> raw latents (B, C, H/8, W/8): the posterior mean."""
        moments = self.vae_quant_conv(self.vae_encoder(images))
        return moments.chunk(2, dim=1)[0]


class LatentCLIP(CLIP):
    """Latent-CLIP. ``encode_latents`` reads raw VAE latents (B, C, H, W); ``encode_text`` reads
    strings or open_clip tokens; both return L2-normalised features unless ``normalize=False``.
    ``logit_scale`` is the log of the CLIP temperature scale, as in open_clip."""

    def __init__(self, config: ModelConfig, vae_encoder: bool = False):
        nn.Module.__init__(self)  # CLIP.__init__ would build a pixel tower we do not want
        self.config = config
        self.output_dict = False
        self.resize_policy: ResizePolicy = "interpolate"  # measured closer than pooling: docs/performance.md
        self.visual = LatentVisionTower(config.vision, config.embed_dim, vae_encoder)
        text = _build_text_tower(config.embed_dim, CLIPTextCfg(**asdict(config.text)))
        for name in ("transformer", "context_length", "vocab_size", "token_embedding", "positional_embedding",
                     "ln_final", "text_projection"):  # the text tower's parts, where CLIP.__init__ puts them
            setattr(self, name, getattr(text, name))
        self.text_pool_type, self.text_eos_id = text.pool_type, text.eos_id
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = None

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def has_vae_encoder(self) -> bool:
        return self.visual.has_vae_encoder

    def encode_latents(self, latents: torch.Tensor, normalize: bool = True,
                       chunk_size: int = DEFAULT_CHUNK, progress: Progress | None = None) -> torch.Tensor:
        """Raw VAE latents (B, C, H, W), any float dtype/device -> features (B, embed_dim) in the
        model's dtype. Differentiable w.r.t. ``latents``. Other sizes than the trained one are
        fitted by ``self.resize_policy``; batches run in chunks of ``chunk_size``, each reported
        to ``progress``."""
        v = self.config.vision
        check_latents(latents, v.family, v.patch_size)
        z = fit_latents(latents, v.latent_size, v.patch_size, self.resize_policy)
        z = z.to(device=self.device, dtype=self.dtype)
        features = []
        for part in z.split(chunk_size):
            features.append(self.visual(part))
            if progress is not None:
                progress(sum(map(len, features)), len(z))
        features = torch.cat(features)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip's name for the image tower: here it reads latents, like the reference."""
        return self.encode_latents(image, normalize=normalize)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """open_clip's tokens of ``texts``, once they are within :func:`latent_clip.fields.check_texts`'s
        bounds (open_clip's BPE costs the square of a word's length)."""
        return tokenize(check_texts(texts, "text"), context_length=self.context_length).to(self.device)

    def encode_text(self, text: str | Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Strings or (N, context_length) token ids -> features (N, embed_dim), as open_clip's
        ``CLIP.encode_text`` computes them, over the positions up to the batch's last end-of-text token
        only: attention is causal and the feature is read at that token, so the padding after it changes
        nothing but the cost (a label of 8 tokens costs a tenth of the 77-token context). Strings are encoded
        once per model version and kept (:mod:`latent_clip.textcache`): the result is a new tensor either way."""
        if isinstance(text, torch.Tensor):
            return self._encode_tokens(text, normalize)
        return TEXT_CACHE.encode(self, check_texts(text, "text"), normalize,
                                 lambda texts: self._encode_tokens(self.tokenize(texts), normalize))

    def _encode_tokens(self, tokens: torch.Tensor, normalize: bool) -> torch.Tensor:
        tokens = tokens.to(self.device)
        n = int(tokens.argmax(dim=-1).max()) + 1 if tokens.numel() else tokens.shape[-1]
        tokens = tokens[:, :n]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding[:n].to(cast_dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        x = text_global_pool(x, tokens, self.text_pool_type, eos_token_id=self.text_eos_id)
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Pixel path: RGB (B, 3, H, W) in [0, 1] -> VAE posterior mean -> ``encode_latents``.
        Deterministic; needs a checkpoint that bundles the VAE encoder."""
        if not self.has_vae_encoder:
            raise ValueError("this model was loaded without a VAE encoder, so it cannot read pixels; "
                             "load a checkpoint that bundles one with vae_encoder=True")
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB in [0, 1], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        x = images.to(device=self.device, dtype=self.dtype) * 2 - 1
        with torch.no_grad():
            latents = torch.cat([self.visual.encode_pixels(part) for part in x.split(DEFAULT_CHUNK)])
        return self.encode_latents(latents, normalize=normalize)

    def forward(self, latents: torch.Tensor, text: torch.Tensor):
        """Training forward, as open_clip's: (latent features, text features, logit_scale.exp())."""
        return self.encode_latents(latents), self.encode_text(text), self.logit_scale.exp()
