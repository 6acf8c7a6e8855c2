"""Shared pytest fixtures: the real-ComfyUI harness (tests/comfy_harness.py), a tiny on-disk VAE and
the benchmarks' tiny offline pipelines; shared helpers and paths live in tests/fixtures.py."""
import pytest
import torch

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


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture
def device() -> torch.device:
    """Where a test that touches a device runs: CUDA when present, the CPU otherwise. Such tests carry the
    ``device`` marker, which ``scripts/gpu_check.sh`` selects (``-m device``)."""
    return DEVICE


@pytest.fixture(params=list(DTYPES.values()), ids=list(DTYPES))
def dtype(request) -> torch.dtype:
    """Each weight dtype the loaders offer, for tests on :func:`device`."""
    return request.param


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
