"""Scoring SDXL latents against a prompt: Latent-CLIP vs the pixel path, side by side in one run.

Pixel paths = SDXL VAE decode -> resize/crop to 224 -> a pixel open_clip image tower -> cosine, with ViT-B-32
(the paper's baseline) and ViT-L-14. Latent paths = Latent-CLIP (B/8, B/4-plus) on the raw latent -> cosine.
True architecture sizes, random weights, fp32, batch 1. FLOPs are counted on meta tensors (no compute); times
are this process's CPU seconds in interleaved repeats (bench/timing.py), each time ratio the median of the
per-repeat ratios with its range. Forward and forward+backward w.r.t. the latent, at 512 and 1024 px.

    .venv/bin/python -m bench.bench_scoring [--repeats 3] [--time 512-fwd 512-fwd+bwd] [--load-check]
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

from bench.reno_models import SD_VAE  # SD's and SDXL's VAEs share this architecture
from bench.timing import Ratio, add_timing_options, ceiling_note, format_ratio, interleaved, ratio, run_measurement
from latent_clip import LatentCLIP, ModelConfig, get_model_config
from latent_clip.pixel_clip import build_pixel_clip, clip_preprocess, pixel_clip_config, pixel_preprocess

PIXEL_TOWERS = ("ViT-B-32", "ViT-L-14")  # the paper's baseline, and the tower the README compared first
LATENT_MODELS = ("Latent-ViT-B-8-512", "Latent-ViT-B-4-512-plus")
CASES = {"512-fwd": (64, False), "512-fwd+bwd": (64, True), "1024-fwd": (128, False), "1024-fwd+bwd": (128, True)}
Reward = Callable[[torch.Tensor], torch.Tensor]


def scoring_paths(device: str, vae: Mapping = SD_VAE, towers: Mapping | None = None,
                  latents: Mapping[str, ModelConfig] | None = None) -> dict[str, Reward]:
    """``{"pixel: decode + T": reward, ..., "latent: L": reward, ...}`` with random weights on ``device``:
    ``towers`` maps a name to an open_clip config (default: :data:`PIXEL_TOWERS`), ``latents`` a name to a
    Latent-CLIP config (default: :data:`LATENT_MODELS`); each reward maps raw latents to cosine scores."""
    towers = towers or {name: pixel_clip_config(name) for name in PIXEL_TOWERS}
    latents = latents or {name: get_model_config(name) for name in LATENT_MODELS}
    with torch.device(device):
        decoder = AutoencoderKL(**vae).eval().requires_grad_(False)
        paths = {f"pixel: decode + {n}": pixel_reward(decoder, build_pixel_clip(cfg)) for n, cfg in towers.items()}
        for name, cfg in latents.items():
            paths[f"latent: {name}"] = latent_reward(LatentCLIP(cfg).eval().requires_grad_(False))
    return paths


def pixel_reward(decoder: AutoencoderKL, clip: torch.nn.Module) -> Reward:
    size, mean, std = pixel_preprocess(clip)
    tower = clip.visual.eval().requires_grad_(False)
    text = F.normalize(torch.randn(1, tower.output_dim), dim=-1)
    return lambda z: F.normalize(tower(clip_preprocess(decoder.decode(z).sample, size, mean, std)), dim=-1) @ text.T


def latent_reward(model: LatentCLIP) -> Reward:
    text = F.normalize(torch.randn(1, model.config.embed_dim), dim=-1)
    return lambda z: model.encode_latents(z) @ text.T


def run(fn: Reward, z: torch.Tensor, backward: bool) -> torch.Tensor:
    z = z.detach().requires_grad_(backward)
    if backward:
        fn(z).sum().backward()
        return z.grad
    with torch.no_grad():
        return fn(z)


def flops(paths: dict[str, Reward], side: int, backward: bool) -> dict[str, float]:
    out = {}
    for name, fn in paths.items():
        with FlopCounterMode(display=False) as counter:
            run(fn, torch.randn(1, 4, side, side, device="meta"), backward)
        out[name] = counter.get_total_flops()
    return out


def time_paths(paths: dict[str, Reward], side: int, backward: bool, repeats: int,
               min_seconds: float = 0.0) -> dict[str, list[float]]:
    """CPU seconds per call of each path on one raw latent (1, 4, side, side), one value per repeat."""
    z = torch.randn(1, 4, side, side) * 4
    return interleaved({name: (lambda fn=fn: run(fn, z, backward)) for name, fn in paths.items()}, repeats,
                       min_seconds=min_seconds)


def report(case: str, fl: dict[str, float], seconds: dict[str, list[float]] | None) -> dict[str, Ratio]:
    """Print each path's GFLOPs (and CPU seconds, GFLOP per CPU second when timed), then every latent path
    against every pixel path: FLOP ratio and time ratio; a time ratio above its FLOP ratio is flagged with
    the throughputs that explain it. Returns the time ratios by name."""
    rate = {n: fl[n] / statistics.median(s) / 1e9 for n, s in seconds.items()} if seconds else {}
    for name, count in fl.items():
        timed = f"{statistics.median(seconds[name]):9.2f} {rate[name]:9.1f}" if seconds else f"{'-':>9} {'-':>9}"
        print(f"{case:<13} {name:<42} {count / 1e9:10.1f} {timed}")
    ratios = {}
    for pixel in (n for n in fl if n.startswith("pixel")):
        for latent in (n for n in fl if n.startswith("latent")):
            name = f"{case} {latent.removeprefix('latent: ')} vs {pixel.removeprefix('pixel: ')}"
            flop_ratio = fl[pixel] / fl[latent]
            r = ratio(seconds[pixel], seconds[latent]) if seconds else None
            print(f"  {name:<64} FLOPs {flop_ratio:7.1f}x   time {format_ratio(r) if r else '-'}")
            if r is None:
                continue
            ratios[name] = r
            note = ceiling_note(r, flop_ratio, {pixel: rate[pixel], latent: rate[latent]})
            if note:
                print(f"    {note}")
    return ratios


def measure(args: argparse.Namespace) -> dict[str, Ratio]:
    timed_cases = [] if args.flops_only else args.time
    meta_paths, cpu_paths = scoring_paths("meta"), scoring_paths("cpu") if timed_cases else {}
    with torch.device("meta"):
        policy = LatentCLIP(get_model_config(LATENT_MODELS[0])).resize_policy
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, CPU time of this process, "
          f"1 warm-up + {args.repeats} interleaved repeats, latents larger than 64x64: {policy}")
    print(f"{'case':<13} {'path':<42} {'GFLOPs':>10} {'CPU s':>9} {'GFLOP/s':>9}")
    ratios = {}
    for case, (side, backward) in CASES.items():
        fl = flops(meta_paths, side, backward)
        timed = case in timed_cases
        seconds = time_paths(cpu_paths, side, backward, args.repeats, args.min_seconds) if timed else None
        ratios |= report(case, fl, seconds)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_options(parser, min_seconds=2.0)  # the latent paths take 0.2-1.3 s a call
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs, time nothing")
    parser.add_argument("--time", nargs="+", choices=list(CASES), default=["512-fwd", "512-fwd+bwd"],
                        help="cases to time (default the 512 px ones; the pixel forward at 1024 px takes about 70 s "
                        "on this machine's CPU and its backward about 23 GB)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_measurement(lambda: measure(args), args)


if __name__ == "__main__":
    main()
