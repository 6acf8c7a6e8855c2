"""A single-file checkpoint (original SD layout: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``) loads offline through ``--pipeline FILE --pipeline-config FOLDER``.

Slow: the full-size random SD1.5 checkpoint of tests/fixtures.py (2 GB, built once with ComfyUI's own
classes and cached in build/test_models/) is converted by diffusers' single-file loader."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fixtures import sd15_checkpoint
from train.benchmarks.generators import UNetGenerator, load_pipeline, make_generator
from tiny_pipelines import write_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.comfyui, pytest.mark.filterwarnings("ignore::FutureWarning")]


def write_sd15_config(folder: Path) -> Path:
    """What ``--pipeline-config`` points at offline: SD1.5's component configs (no weights), a
    tokenizer, and the pipeline's model_index.json."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    with torch.device("meta"):
        UNet2DConditionModel(sample_size=64, cross_attention_dim=768).save_config(folder / "unet")
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                      sample_size=512).save_config(folder / "vae")
    CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   projection_dim=768, hidden_act="quick_gelu").save_pretrained(folder / "text_encoder")
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           timestep_spacing="trailing").save_config(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    return folder


def test_single_file_sd15_checkpoint_loads_offline_and_generates(tmp_path):
    ckpt = sd15_checkpoint()
    pipe = load_pipeline(ckpt, config=str(write_sd15_config(tmp_path / "sd15-config")))
    with safe_open(str(ckpt), "pt") as f:  # the checkpoint's tensors, converted to diffusers' names
        assert torch.equal(pipe.unet.conv_in.weight, f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").float())
        assert torch.equal(pipe.vae.decoder.conv_out.weight, f.get_tensor("first_stage_model.decoder.conv_out.weight").float())
        emb = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, f.get_tensor(emb).float())
    gen = make_generator(pipe, "cpu", 64)
    assert isinstance(gen, UNetGenerator) and gen.latent_shape == (4, 8, 8)
    e = gen.noise([0]).requires_grad_(True)
    raw = gen.one_step(gen.condition("a cat"))(e)
    assert raw.shape == (1, 4, 8, 8) and raw.isfinite().all()
    raw.square().sum().backward()
    assert e.grad.abs().sum() > 0


def test_missing_files_and_configs_are_reported(tmp_path):
    ckpt = sd15_checkpoint()
    with pytest.raises(ValueError, match="single-file checkpoint.*--pipeline-config"):
        load_pipeline(ckpt)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(ckpt, config=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_pipeline(tmp_path / "sd-turbo.safetensors")
