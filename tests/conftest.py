"""Shared pytest fixtures: the real-ComfyUI harness (tests/comfy_harness.py) and a tiny on-disk VAE;
shared helpers and paths live in tests/fixtures.py."""
import pytest

from comfy_harness import comfy_inprocess, comfy_server  # noqa: F401 - pytest fixtures
from train.benchmarks.tiny_pipelines import tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    tiny_vae().save_pretrained(path)
    return path
