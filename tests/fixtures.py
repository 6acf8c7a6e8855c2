"""What several test modules share: paths to the repository's own test data (tests/data/README.md
says where each file comes from), a seeded tiny Latent-CLIP, the full-size random SD1.5 checkpoint
the slow ComfyUI and single-file tests load, the arguments and log of a smoke ``train fit`` run, and
child processes run from the repository. Pytest fixtures are in conftest.py."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from latent_clip import LatentCLIP, ModelConfig
from latent_clip.files import atomic_write
from synthetic import TINY_LATENT_CFG

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
IMAGES = DATA / "images"              # 15 real labelled images (labels.tsv)
LAYOUT = DATA / "latent-clip-layout"  # key manifests of the official checkpoints
IMAGE_FILES = sorted(p for p in IMAGES.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
N_IMAGES = len(IMAGE_FILES)

CKPT_NAME = "latent_clip_test_sd15.safetensors"  # what tests/api_workflows/{reno,guidance}_*.json load
CKPT_CACHE = REPO / "build" / "test_models" / CKPT_NAME
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
             "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False}
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def tiny_model(cfg: dict = TINY_LATENT_CFG, **vision) -> LatentCLIP:
    """A LatentCLIP of ``cfg`` with ``vision`` replacing keys of its vision_cfg, seeded, in eval mode."""
    torch.manual_seed(0)
    return LatentCLIP(ModelConfig.from_dict({**cfg, "vision_cfg": {**cfg["vision_cfg"], **vision}})).eval()


def _random_fp16(module: torch.nn.Module, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) weights, norm weights 1, biases 0, as fp16 under ``prefix``."""
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
    from bench.inprocess import import_comfyui
    from comfy_harness import COMFY_DIR
    import_comfyui(COMFY_DIR)
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    ops = comfy.ops.disable_weight_init
    state = _random_fp16(UNetModel(**SD15_UNET, operations=ops), "model.diffusion_model.", 0)
    state.update(_random_fp16(AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4), "first_stage_model.", 1))
    clip = _random_fp16(comfy.sd1_clip.SDClipModel(), "cond_stage_model.", 2)
    state.update({k: v for k, v in clip.items() if "logit_scale" not in k and "text_projection" not in k})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def sd15_checkpoint() -> Path:
    """The cached random SD1.5 checkpoint, built first if missing (needs ComfyUI's classes)."""
    from comfy_harness import require_comfyui
    require_comfyui()
    if not CKPT_CACHE.is_file():
        code = ("import sys; sys.path[:0] = ['tests', '.']; import fixtures as t; "
                f"t.build_sd15_checkpoint(t.Path({str(CKPT_CACHE)!r}))")
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=600)
    return CKPT_CACHE


def fit_args(data: Path, out: Path, name: str, **over) -> list[str]:
    """``python -m train fit`` arguments for a 6-step smoke run on ``data``, options in ``over``."""
    values = {"config": "smoke", "train-data": str(data), "out-dir": str(out), "name": name, "max-steps": 6,
              "save-every": 3, **over}
    return [x for k, v in values.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def records(run: Path) -> list[dict]:
    """The records of a fit run's log.jsonl."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def bench_records(out: Path) -> list[dict]:
    """Every record of a benchmark run in ``out`` (its results.rank*.jsonl, rank by rank)."""
    return [json.loads(line) for p in sorted(out.glob("results.rank*.jsonl")) for line in p.read_text().splitlines()]


def logged_losses(run: Path) -> dict[int, float]:
    """step -> loss from a fit run's log.jsonl (the last record of a step wins; a torn last line is ignored)."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def child_env(threads: int | None = 1) -> dict[str, str]:
    """The environment of a child ``python -m ...`` run from REPO: the repository importable, ``threads``
    OpenMP threads (None: this process's torch thread count, so that losses match bit for bit)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads or torch.get_num_threads())}


def kill_when(cmd: list[str], ready: Callable[[], bool], threads: int | None = 1, timeout: float = 300) -> None:
    """Run ``cmd`` from REPO (:func:`child_env`) and SIGKILL it once ``ready()``; fails if it ended first."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=60)
        stderr.seek(0)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {stderr.read().decode()[-2000:]}"
