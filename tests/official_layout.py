"""Synthesise checkpoints in the exact layout of the official Latent-CLIP releases, and an
independent reference forward built from plain open_clip / diffusers modules (as the authors'
fork composes them), for parity tests. Layout facts: tests/data/latent-clip-layout/README.md."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from fixtures import LAYOUT
from latent_clip import LatentCLIP, ModelConfig, get_model_config
from latent_clip.factory import official_state_dict


def manifest(name: str) -> dict:
    return json.loads((LAYOUT / f"manifest-{name}.json").read_text())


def reduced_config(name: str) -> ModelConfig:
    """The official config with small widths/depths; key names and patch/latent geometry kept."""
    cfg = get_model_config(name)
    vision = replace(cfg.vision, width=64, layers=2)
    text = replace(cfg.text, width=64, heads=1, layers=2)
    return replace(cfg, embed_dim=48, vision=vision, text=text)


def random_model(cfg: ModelConfig, seed: int = 0, vae_encoder: bool = True) -> LatentCLIP:
    """Random weights with non-trivial norms/biases so parity tests are not vacuous."""
    torch.manual_seed(seed)
    model = LatentCLIP(cfg, vae_encoder=vae_encoder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def official_checkpoint_payload(model: LatentCLIP, manifest_name: str | None = None,
                                with_optimizer: bool = True, with_vae: bool = True) -> dict:
    """``{epoch, name, state_dict, optimizer}`` as the fork's DDP training writes it: keys prefixed
    ``module.``, in the manifest's save order, AdamW with open_clip's two param groups and a numpy
    float learning rate (open_clip's cosine schedule writes np.float64)."""
    state = official_state_dict(model)
    if not with_vae:
        state = {k: v for k, v in state.items() if ".vae_" not in k}
    if manifest_name:
        order = [e["key"] for e in manifest(manifest_name)["keys"]]
        state = {k: state[k] for k in order if k in state}
    payload = {"epoch": 34, "name": "synthetic-latent-clip", "state_dict": state}
    if with_optimizer:
        # stepped on copies: the model keeps its weights, only the optimizer state matters here
        params = [(n, p.detach().clone()) for n, p in model.named_parameters() if ".vae_" not in n]
        def no_wd(n, p): return p.ndim < 2 or any(s in n for s in ("bn", "ln", "bias", "logit_scale"))
        groups = [{"params": [p for n, p in params if no_wd(n, p)], "weight_decay": 0.0},
                  {"params": [p for n, p in params if not no_wd(n, p)], "weight_decay": 0.2}]
        for _, p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
        opt.step()
        for group in opt.param_groups:
            group["lr"] = np.float64(9.5e-4)
        payload["optimizer"] = opt.state_dict()
    return payload


def write_official_checkpoint(path: Path, model: LatentCLIP, **kwargs) -> Path:
    torch.save(official_checkpoint_payload(model, **kwargs), path)
    return path


class ReferenceLatentCLIP(nn.Module):
    """The fork's LatentVisionTransformer + CLIP, rebuilt from plain open_clip and diffusers:
    an open_clip CLIP whose ViT conv1 reads latents, and a diffusers AutoencoderKL for pixels."""

    def __init__(self, cfg: ModelConfig, state: dict[str, torch.Tensor]):
        super().__init__()
        v = cfg.vision
        self.clip = CLIP(cfg.embed_dim,
                         CLIPVisionCfg(layers=v.layers, width=v.width, patch_size=v.patch_size,
                                       image_size=v.latent_size, head_width=v.head_width),
                         CLIPTextCfg(**{k: getattr(cfg.text, k) for k in
                                        ("context_length", "vocab_size", "width", "heads", "layers")}))
        self.clip.visual.conv1 = nn.Conv2d(v.latent_n_channels, v.width, v.patch_size, v.patch_size, bias=False)
        clip_state = {k.replace("visual.latent_vit.", "visual."): t for k, t in state.items() if ".vae_" not in k}
        self.clip.load_state_dict(clip_state, strict=True)
        vae_state = {k.replace("visual.vae_encoder.", "encoder.").replace("visual.vae_quant_conv.", "quant_conv."): t
                     for k, t in state.items() if ".vae_" in k}
        self.vae = None
        if vae_state:
            self.vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4,
                                     block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                     latent_channels=v.latent_n_channels)
            missing, unexpected = self.vae.load_state_dict(vae_state, strict=False)
            assert not unexpected and all(k.startswith(("decoder.", "post_quant_conv.")) for k in missing)
        self.eval()

    @torch.no_grad()
    def encode_latents(self, z):
        return self.clip.encode_image(z, normalize=True)

    @torch.no_grad()
    def encode_text(self, tokens):
        return self.clip.encode_text(tokens, normalize=True)
