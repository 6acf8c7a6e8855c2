"""What does ReNO cost a ComfyUI user in memory and time: the ReNO sampler against a plain 1-step sample.

Question: with ComfyUI 0.3.75's own model classes and sampling stack (``CFGGuider.sample``, as
``SamplerCustomAdvanced`` runs it, under ``torch.inference_mode`` like the executor), how much more
memory and CPU time does one ``LatentCLIPRenoSampler`` run take than a plain 1-step euler sample of the same
model, and what does a run leave behind?

* peak: the process's peak RSS during the sample over its RSS with the models loaded (the
  diffusion model's weights are shared with autograd in place, so ReNO's extra is one
  UNet forward+backward of activations plus the Latent-CLIP tower's);
* left: RSS after the run (outputs and sampler dropped, ``gc.collect()``) over RSS before it, and the
  bytes of live tensors that did not exist before the run (what a leak would show);
* time: both variants in one process, timed in interleaved repeats on its CPU time after an untimed
  warm-up round (:mod:`bench.timing`); reno / plain as the median of the per-repeat ratios with their range.

The model is SDXL-Turbo's (``comfy.supported_models.SDXL``, 2.57 B params, EPS, the SDXL latent format)
or SD-Turbo's (SD2.x, ``SD20`` with eps) UNet, random N(0, 1/fan_in) weights in fp32 on the CPU; the
reward is a random Latent-ViT-B-8-512 of the model's latent family at ReNO's default weight. Each
variant's memory is measured in its own child process (peak RSS is per process), the times in a third, one
after the other, 1 thread; each child under :class:`bench.memory_guard.MemoryGuard`.

    .venv/bin/python -m bench.bench_reno_comfy --model sdxl-turbo --size 512 --iterations 2 --repeats 3
        [--comfyui build/ComfyUI] [--comfy-args=--use-pytorch-cross-attention]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench.inprocess import import_comfyui
from bench.memory import reset_peak, status_gb
from bench.memory_guard import MemoryGuard
from bench.reno_models import random_init_
from bench.timing import busy_neighbour, format_ratio, interleaved, ratio

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "reno")
CHILDREN = (*VARIANTS, "timing")  # one sample per variant for memory; both variants interleaved for time
UNETS = {  # ComfyUI's detected UNet configs (comfy/model_detection.py), the supported_models class, latent family
    "sdxl-turbo": ("SDXL", "sdxl", {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
        "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False}),
    "sd-turbo": ("SD20", "sd15", {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
        "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
        "use_temporal_resblock": False}),
}


def live_tensor_bytes() -> dict[int, int]:
    gc.collect()
    out = {}
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor) and o.device.type == "cpu" and not o.is_meta:
            s = o.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


def setup(model_name: str, size: int, iterations: int, threads: int, comfy_dir: Path,
          comfy_args: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """ComfyUI with the pack, the model and a Latent-CLIP reward loaded; per variant a callable that samples
    once as ``SamplerCustomAdvanced`` would (``CFGGuider.sample`` under ``torch.inference_mode``)."""
    torch.set_num_threads(threads)
    pack = import_comfyui(comfy_dir, *comfy_args).pack
    reno, reward_nodes, loaders, latent_clip = (importlib.import_module(f"{pack.__name__}.{name}") for name in
                                                ("nodes.reno", "nodes.rewards", "nodes.loaders", "latent_clip"))
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.samplers
    import comfy.supported_models

    cls, family, unet_config = UNETS[model_name]
    torch.manual_seed(0)
    with torch.inference_mode():  # as CheckpointLoaderSimple and the loader node run
        model = getattr(comfy.supported_models, cls)(dict(unet_config)).get_model({})
        for name, p in model.diffusion_model.named_parameters():
            random_init_(name, p)
        config = latent_clip.get_model_config("Latent-ViT-B-8-512").to_dict()
        config["vision_cfg"]["latent_family"] = family
        clip = latent_clip.LatentCLIP(latent_clip.ModelConfig.from_dict(config)).eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    lclip = comfy.model_patcher.ModelPatcher(loaders.ModelHolder(clip), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    mm.load_models_gpu([patcher, lclip], force_full_load=True)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(1, 77, unet_config["context_dim"], generator=g)
    extra = {"pooled_output": torch.randn(1, 1280, generator=g)} if cls == "SDXL" else {}
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    reward = reward_nodes.LatentCLIPRewardPrompt.execute(lclip, "a photo of an astronaut riding a horse",
                                                 latent_clip.rewards.CLIP_SCORE_WEIGHT).result[0]
    inner = comfy.samplers.ksampler("euler")
    samplers = {"plain": inner, "reno": reno.RenoSampler(inner, reward, iterations=iterations)}

    def sample(sampler) -> torch.Tensor:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            guider = comfy.samplers.CFGGuider(patcher)
            guider.inner_set_conds({"positive": [[context, extra]]})
            guider.set_cfg(1.0)
            sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", 1)
            return guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True)
    return {variant: (lambda s=s: sample(s)) for variant, s in samplers.items()}


def memory_child(variant: str, samples: dict[str, Callable[[], torch.Tensor]]) -> dict:
    """One sample of ``variant``: peak RSS over the loaded models, what the run leaves behind."""
    before, before_tensors = status_gb("VmRSS"), live_tensor_bytes()
    reset_peak()
    t0 = time.perf_counter()
    out = samples[variant]()
    seconds = time.perf_counter() - t0
    peak = status_gb("VmHWM")
    finite = bool(torch.isfinite(out).all())
    del out
    new = {k: v for k, v in live_tensor_bytes().items() if k not in before_tensors}
    return {"variant": variant, "seconds": seconds, "finite": finite,
            "rss_loaded_gb": before, "peak_rss_gb": peak, "peak_over_loaded_gb": peak - before,
            "rss_left_gb": status_gb("VmRSS") - before, "new_live_tensor_gb": sum(new.values()) / 2 ** 30}


def timing_child(samples: dict[str, Callable[[], torch.Tensor]], repeats: int, beside_burner: bool = False) -> dict:
    """CPU seconds of both variants in interleaved repeats after one warm-up round; reno / plain per repeat;
    ``beside_burner``: beside :func:`bench.timing.busy_neighbour`."""
    with busy_neighbour() if beside_burner else contextlib.nullcontext():
        seconds = interleaved(samples, repeats=repeats, warmup=1)
    r = ratio(seconds["reno"], seconds["plain"])
    return {"variant": "timing", "seconds": seconds, "reno_over_plain": r.median, "low": r.low, "high": r.high,
            "repeats": r.repeats}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(UNETS), default="sdxl-turbo")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--iterations", type=int, default=2, help="ReNO evaluations")
    ap.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-anon-gb", type=float, default=10.0, help="stop a child past this anonymous memory (GiB)")
    ap.add_argument("--min-available-gb", type=float, default=2.0, help="stop when the machine has less (GiB)")
    ap.add_argument("--comfyui", type=Path, default=Path(os.environ.get("LATENT_CLIP_COMFYUI_DIR") or
                                                         ROOT / "build" / "ComfyUI"), help="ComfyUI 0.3.75 folder")
    ap.add_argument("--comfy-args", default="", help="ComfyUI options besides --cpu, e.g. "
                                                   "'--use-pytorch-cross-attention' (CPU default: sub-quadratic)")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--beside-burner", action="store_true", help="time beside a CPU-burning neighbour process")
    ap.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (args.comfyui / "main.py").is_file():
        sys.exit(f"bench_reno_comfy: no ComfyUI at {args.comfyui} (bash scripts/install_comfyui.sh, or --comfyui)")
    return args


def run_child(args) -> dict:
    """What child ``args.child`` measures, under the memory guard."""
    with MemoryGuard(args.max_anon_gb, args.min_available_gb, f"bench_reno_comfy {args.child}"):
        samples = setup(args.model, args.size, args.iterations, args.threads, args.comfyui, args.comfy_args.split())
        if args.child == "timing":
            out = timing_child(samples, args.repeats, args.beside_burner)
        else:
            out = memory_child(args.child, samples)
    return {**out, "model": args.model}


def main(argv=None) -> dict:
    args = parse(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return {}
    print(f"torch {torch.__version__}, ComfyUI at {args.comfyui} (--cpu {args.comfy_args}), {args.model} UNet, "
          f"{args.size} px, batch 1, {args.iterations} ReNO evaluations, {args.threads} thread(s)"
          + (", timed beside a CPU burner" if args.beside_burner else ""), flush=True)
    runs = {}
    for name in CHILDREN:
        cmd = [sys.executable, "-m", "bench.bench_reno_comfy", "--child", name, "--model", args.model,
               "--size", str(args.size), "--iterations", str(args.iterations), "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--max-anon-gb", str(args.max_anon_gb), "--min-available-gb",
               str(args.min_available_gb), "--comfyui", str(args.comfyui), f"--comfy-args={args.comfy_args}"]
        cmd += ["--beside-burner"] if args.beside_burner and name == "timing" else []
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(f"bench_reno_comfy: child {name} failed ({done.returncode}): "
                     f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        runs[name] = r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:6s}: " + (f"CPU s per sample, interleaved: plain {r['seconds']['plain']}, reno "
                                f"{r['seconds']['reno']}" if name == "timing" else
                                f"RSS with models loaded {r['rss_loaded_gb']:.2f} GB, peak {r['peak_rss_gb']:.2f} GB "
                                f"(+{r['peak_over_loaded_gb']:.2f}); left after the run {r['rss_left_gb']:+.2f} GB "
                                f"RSS, {r['new_live_tensor_gb']:.3f} GB new live tensors"), flush=True)
    plain, ours, timing = runs["plain"], runs["reno"], runs["timing"]
    summary = {"peak over loaded, reno - plain (GB)": ours["peak_over_loaded_gb"] - plain["peak_over_loaded_gb"],
               "peak RSS, reno / plain": ours["peak_rss_gb"] / plain["peak_rss_gb"],
               "CPU time, reno / plain": format_ratio(ratio(timing["seconds"]["reno"], timing["seconds"]["plain"]))}
    print("\nmeasured in this one run:")
    for k, v in summary.items():
        print(f"  {k:40s} {v:.2f}" if isinstance(v, float) else f"  {k:40s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {**vars(args), "comfyui": str(args.comfyui)}, "runs": runs, "summary": summary}, f,
                      indent=2)
    return summary


if __name__ == "__main__":
    main()
