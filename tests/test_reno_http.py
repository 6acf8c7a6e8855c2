"""ReNO and safety-guidance workflows end to end over HTTP, through CheckpointLoaderSimple on a
full-size random SD1.5 checkpoint (original single-file layout, built by the test) at 64 px, with the tiny Latent-CLIP weights.

Slow: the 2 GB checkpoint is built once (~30 s, cached in build/test_models/) and every UNet
step runs the real 860 M-parameter UNet on the CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_harness import COMFY_DIR, ROOT, load_api_workflow, read_latent_file, require_comfyui, run_graph

pytestmark = pytest.mark.comfyui

CKPT_NAME = "latent_clip_test_sd15.safetensors"  # what workflows/api/{reno,guidance}_*.json load
CKPT_CACHE = ROOT / "build" / "test_models" / CKPT_NAME
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
             "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False}
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _random_fp16(module: torch.nn.Module, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) weights, norm weights 1, biases 0 (A8), as fp16 under ``prefix``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if t.ndim > 1 and t.is_floating_point():
            t = torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5
        elif t.is_floating_point():
            t = torch.ones(t.shape) if "norm" in name and name.endswith("weight") else torch.zeros(t.shape)
        out[prefix + name] = t.half() if t.is_floating_point() else t
    return out


def build_sd15_checkpoint(path: Path) -> None:
    """A random SD1.5 checkpoint from ComfyUI's own classes (run in a child process: ~6 GB RSS)."""
    sys.path.insert(0, str(COMFY_DIR))
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    state = {}
    with torch.no_grad():
        ops = comfy.ops.disable_weight_init
        state.update(_random_fp16(UNetModel(**SD15_UNET, operations=ops), "model.diffusion_model.", 0))
        state.update(_random_fp16(AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4), "first_stage_model.", 1))
        clip = _random_fp16(comfy.sd1_clip.SDClipModel(), "cond_stage_model.", 2)
        state.update({k: v for k, v in clip.items() if "logit_scale" not in k and "text_projection" not in k})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def sd15_checkpoint() -> Path:
    """The cached random SD1.5 checkpoint, built first if missing (needs ComfyUI's classes)."""
    require_comfyui()
    if not CKPT_CACHE.is_file():
        code = ("import sys; sys.path[:0] = ['tests', '.']; import test_reno_http as t; "
                f"t.build_sd15_checkpoint(t.Path({str(CKPT_CACHE)!r}))")
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=600)
    return CKPT_CACHE


@pytest.fixture(scope="module")
def sd15_server(comfy_server):
    sd15_checkpoint()
    folder = comfy_server.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / CKPT_NAME).exists():
        (folder / CKPT_NAME).symlink_to(CKPT_CACHE)
    return comfy_server


def _saved(server, outputs: dict, node: str) -> torch.Tensor:
    item = outputs[node]["latents"][0]
    return read_latent_file(server.output_dir / item["subfolder"] / item["filename"])


def test_reno_workflows_use_our_nodes(comfy_server):
    """Every node of the ReNO/guidance workflows (UI and API) exists; our inputs have tooltips."""
    info = comfy_server.get("/object_info")
    paths = [*(ROOT / "example_workflows").glob("reno_*.json"), *(ROOT / "example_workflows").glob("guidance_*.json"),
             *(ROOT / "workflows" / "api").glob("reno_*.json"), *(ROOT / "workflows" / "api").glob("guidance_*.json")]
    assert len(paths) == 6
    for path in paths:
        data = json.loads(path.read_text())
        types = [n["type"] for n in data["nodes"]] if "nodes" in data else [n["class_type"] for n in data.values()]
        assert set(types) <= set(info), f"{path.name}: {set(types) - set(info)}"
    for node_id in ("LatentCLIPRenoSampler", "LatentCLIPReno", "LatentCLIPRewardPrompt", "LatentCLIPRewardAvoid",
                    "LatentCLIPRewardCombine", "LatentCLIPRewardPixelCLIP", "LatentCLIPAvoidGuider"):
        spec = info[node_id]
        assert spec["category"] in ("latent_clip/reno", "latent_clip/guidance")
        for name, inp in {**spec["input"]["required"], **spec["input"].get("optional", {})}.items():
            assert inp[1].get("tooltip"), f"{node_id}.{name}"
    assert info["LatentCLIPRenoSampler"]["output"] == ["SAMPLER"]
    assert info["LatentCLIPAvoidGuider"]["output"] == ["GUIDER"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reno_sdxl_turbo.json", "reno_sd_turbo_prompt.json", "guidance_sdxl_turbo.json"])
def test_workflow_runs_through_the_real_loader(sd15_server, name):
    graph = load_api_workflow(name)
    outputs = run_graph(sd15_server, graph)
    (save,) = [n for n, node in graph.items() if node["class_type"] == "SaveLatent"]
    z = _saved(sd15_server, outputs, save)
    assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all()
    if name.startswith("reno"):
        assert "ReNO: 2 iterations" in sd15_server.log_tail(200_000)
