"""Shared pytest fixtures: the real-ComfyUI harness (tests/comfy_harness.py), a tiny on-disk VAE and
the benchmarks' tiny offline pipelines; shared helpers and paths live in tests/fixtures.py."""
import pytest

from comfy_harness import bare_comfy_server, comfy_inprocess, comfy_server, sd15_server  # noqa: F401 - fixtures
from tiny_pipelines import build_all, tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    tiny_vae().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: folder or file} of the tiny offline pipelines and Latent-CLIP weights (tiny_pipelines.build_all)."""
    return build_all(tmp_path_factory.mktemp("tiny"))
