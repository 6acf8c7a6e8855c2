"""Tiny, randomly initialised diffusers pipelines (SD-Turbo-, SDXL-Turbo-, FLUX.1- and SD3-shaped) and a
tiny Latent-CLIP, saved to disk in the real layouts with tokenizers built offline: no downloads. The
tests and ``bench/`` run the benchmark commands on them; a user can too, to try a command end to end
before fetching real weights::

    PYTHONPATH=tests python -c "from tiny_pipelines import build_all; print(build_all(__import__('pathlib').Path('tiny')))"
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

import latent_clip

from synthetic import tiny_latent_cfg

TINY_LATENT_CLIP = tiny_latent_cfg(image_size=64, layers=1, patch_size=1)


def write_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (no merges), built offline: 514 tokens."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def text_encoder(tok, projection: int | None = None, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=projection or hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_vae(seed: int = 0, **config):
    """A tiny AutoencoderKL (f=8): 4 latent channels and the SDXL family's scaling (so that it pairs
    with the tiny Latent-CLIP, ``latent_clip.check_family``) unless ``config`` says otherwise."""
    from diffusers import AutoencoderKL

    sdxl = latent_clip.get_latent_family(TINY_LATENT_CLIP["vision_cfg"]["latent_family"])
    torch.manual_seed(seed)
    return AutoencoderKL(**{"block_out_channels": (8, 8, 8, 8), "down_block_types": ("DownEncoderBlock2D",) * 4,
                            "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "latent_channels": 4,
                            "norm_num_groups": 4, "sample_size": 64, "scaling_factor": sdxl.scaling_factor,
                            **config})


def tiny_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  timestep_spacing="trailing", prediction_type="epsilon")


def build_sd(folder: Path, seed: int = 0) -> Path:
    """SD-Turbo-shaped: UNet (cross-attn 32), tiny VAE (f=8, SDXL-family scaling), CLIP text encoder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tok = write_tokenizer(folder / "_tok")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=text_encoder(tok, seed=seed), tokenizer=tok,
                                   unet=unet, scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """SDXL-Turbo-shaped: two text encoders (the second with projection), text_time added cond."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tok = write_tokenizer(folder / "_tok")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                                transformer_layers_per_block=1)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed), text_encoder=text_encoder(tok, seed=seed),
                                     text_encoder_2=text_encoder(tok, projection=32, seed=seed + 1), tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=tiny_scheduler())
    pipe.save_pretrained(str(folder))
    return folder


def build_latent_clip(path: Path, seed: int = 0, family: str = "sdxl", channels: int = 4) -> Path:
    """The tiny Latent-CLIP (random) of latent ``family``, exported to ``path``."""
    cfg = {**TINY_LATENT_CLIP, "vision_cfg": {**TINY_LATENT_CLIP["vision_cfg"], "latent_family": family,
                                              "latent_n_channels": channels}}
    torch.manual_seed(seed)
    return latent_clip.save_export(latent_clip.LatentCLIP(latent_clip.ModelConfig.from_dict(cfg)).eval(), path)


def build_all(root: Path) -> dict[str, Path]:
    return {"sd": build_sd(root / "sd"), "latent_clip": build_latent_clip(root / "latent_clip.safetensors")}


def write_t5_tokenizer(folder: Path):
    """A T5 (Unigram, SentencePiece-style) fast tokenizer built offline: letters, digits, punctuation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -2.5) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    t5 = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
    t5.save_pretrained(str(folder))
    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


def t5_encoder(tok, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def vae16(scaling: float, shift: float, seed: int = 0):
    """A 16-channel VAE (f=8) without quant convs, as FLUX's and SD3's."""
    return tiny_vae(seed, latent_channels=16, scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                    use_post_quant_conv=False)


def build_flux(folder: Path, dev: bool = False, seed: int = 0) -> Path:
    """FLUX.1-schnell-shaped (``dev``: guidance embedding + resolution-dependent shift, as -dev):
    CLIP + T5 text encoders, a 1+1-block transformer on 2x2-packed 16-channel latents,
    FLUX's VAE scaling (0.3611) and shift (0.1159)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tok, t5_tok = write_tokenizer(folder / "_tok"), write_t5_tokenizer(folder / "_t5tok")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=dev, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=dev,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae16(0.3611, 0.1159, seed), text_encoder=text_encoder(clip_tok),
                        tokenizer=clip_tok, text_encoder_2=t5_encoder(t5_tok, seed), tokenizer_2=t5_tok,
                        transformer=transformer)
    pipe.save_pretrained(str(folder))
    return folder


def build_sd3(folder: Path, seed: int = 0) -> Path:
    """SD3-shaped: two projected CLIPs + T5, a 1-block MMDiT (patch 2), shift 3, SD3's VAE factors."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tok, t5_tok = write_tokenizer(folder / "_tok"), write_t5_tokenizer(folder / "_t5tok")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), vae=vae16(1.5305, 0.0609, seed),
        text_encoder=text_encoder(clip_tok, projection=16, hidden=16, seed=seed), tokenizer=clip_tok,
        text_encoder_2=text_encoder(clip_tok, projection=16, hidden=16, seed=seed + 1), tokenizer_2=clip_tok,
        text_encoder_3=t5_encoder(t5_tok, seed), tokenizer_3=t5_tok, transformer=transformer)
    pipe.save_pretrained(str(folder))
    return folder
