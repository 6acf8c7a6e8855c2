"""Shared pytest fixtures: the real-ComfyUI harness (tests/comfy_harness.py) and a tiny on-disk VAE;
shared helpers and paths live in tests/fixtures.py."""
import pytest
import torch

from comfy_harness import comfy_inprocess, comfy_server  # noqa: F401 - pytest fixtures


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=4)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path
