"""Scoring SDXL latents against a prompt: Latent-CLIP vs the pixel path, side by side in one run.

Pixel path = SDXL VAE decode -> resize/crop to 224 -> open_clip ViT-L-14 image tower -> cosine.
Latent path = Latent-CLIP (B/8, B/4-plus) on the raw latent -> cosine. True architecture sizes,
random weights, fp32, batch 1. FLOPs are counted on meta tensors (no compute); times are medians of
``--rounds`` interleaved rounds. Forward and forward+backward w.r.t. the latent, at 512 and 1024 px.

    .venv/bin/python -m bench.bench_scoring [--rounds 3] [--time-1024]
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

from latent_clip import LatentCLIP, get_model_config
from latent_clip.pixel_clip import clip_preprocess

SDXL_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)


def build(device: str):
    with torch.device(device):
        vae = AutoencoderKL(**SDXL_VAE).eval().requires_grad_(False)
        vit_l = open_clip.create_model("ViT-L-14", device=device).visual.eval().requires_grad_(False)
        latents = {n: LatentCLIP(get_model_config(n)).eval().requires_grad_(False)
                   for n in ("Latent-ViT-B-8-512", "Latent-ViT-B-4-512-plus")}
    text = {n: F.normalize(torch.randn(1, m.config.embed_dim, device=device), dim=-1) for n, m in latents.items()}
    text_l = F.normalize(torch.randn(1, 768, device=device), dim=-1)

    def pixel_reward(z):
        x = clip_preprocess(vae.decode(z).sample, 224)  # raw latents in, ViT-L-14's OpenAI-normalised input out
        return F.normalize(vit_l(x), dim=-1) @ text_l.T

    def latent_reward(name):
        model = latents[name]
        return lambda z: model.encode_latents(z) @ text[name].T

    return {"pixel: SDXL VAE decode + ViT-L-14": pixel_reward, **{f"latent: {n}": latent_reward(n) for n in latents}}


def run(fn, z, backward: bool):
    z = z.detach().requires_grad_(backward)
    if backward:
        fn(z).sum().backward()
        return z.grad
    with torch.no_grad():
        return fn(z)


def flops(paths, side: int, backward: bool) -> dict[str, float]:
    out = {}
    for name, fn in paths.items():
        with FlopCounterMode(display=False) as counter:
            run(fn, torch.randn(1, 4, side, side, device="meta"), backward)
        out[name] = counter.get_total_flops()
    return out


def times(paths, side: int, backward: bool, rounds: int) -> dict[str, float]:
    z = torch.randn(1, 4, side, side) * 4
    for fn in paths.values():  # warm-up: allocator, oneDNN kernel selection
        run(fn, torch.randn(1, 4, 64, 64), backward)
    samples = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            start = time.perf_counter()
            run(fn, z, backward)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as the reference measurements: "
                        "stable on a shared 2-core machine)")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs, time nothing")
    parser.add_argument("--time-1024", action="store_true", help="also time 1024 px (pixel fwd ~70 s on 2 cores; "
                        "pixel fwd+bwd needs ~23 GB and is never timed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta_paths, cpu_paths = build("meta"), build("cpu")
    pixel = next(iter(cpu_paths))
    with torch.device("meta"):
        policy = LatentCLIP(get_model_config("Latent-ViT-B-8-512")).resize_policy
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, rounds {args.rounds}, "
          f"latents larger than 64x64: {policy}")
    print(f"{'case':<14} {'path':<38} {'GFLOPs':>10} {'pixel/this':>11} {'seconds':>9} {'pixel/this':>11}")
    for side, px in ((64, 512), (128, 1024)):
        for backward in (False, True):
            case = f"{px}px {'fwd+bwd' if backward else 'fwd'}"
            fl = flops(meta_paths, side, backward)
            timed = not args.flops_only and (px == 512 or (args.time_1024 and not backward))
            tm = times(cpu_paths, side, backward, args.rounds) if timed else {}
            for name in cpu_paths:
                t = tm.get(name)
                t_ratio = f"{tm[pixel] / t:10.1f}x" if t else f"{'-':>11}"
                print(f"{case:<14} {name:<38} {fl[name] / 1e9:10.1f} {fl[pixel] / fl[name]:10.1f}x "
                      f"{(f'{t:9.2f}' if t else '        -')} {t_ratio}")


if __name__ == "__main__":
    main()
