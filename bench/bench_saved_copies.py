"""What does ``latent_clip.reno.private_saved_tensors`` cost on a model that does not need it?

Question: the ComfyUI ReNO sampler runs every generator forward under ``private_saved_tensors``
(so that models updating activations in place, such as ComfyUI's FLUX, can be differentiated).
For the common case, SD-Turbo's UNet, how much slower is one fwd+bwd w.r.t. the noise, and how much
higher is the peak memory, than plain autograd?

Each measurement runs in a fresh child process (peak RSS = the child's ``ru_maxrss``, which
includes the weights; the delta over a no-grad forward isolates what autograd keeps), variants
alternate (plain, private, plain, private, ...) so both see the same machine load. Random weights,
fp32, the SD-2.1-base UNet config of ``bench_reno`` (866 M params), one step at t = 999.

    .venv/bin/python -m bench.bench_saved_copies --size 256 --rounds 2 [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("nograd", "plain", "private")


def child(variant: str, size: int, threads: int) -> dict:
    from contextlib import nullcontext

    from diffusers import UNet2DConditionModel

    from bench.reno_models import SD21_BASE_UNET, frozen
    from latent_clip.reno import private_saved_tensors

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = frozen(UNet2DConditionModel(**SD21_BASE_UNET))
    noise = torch.randn(1, 4, size // 8, size // 8)
    context = torch.randn(1, 77, 1024)
    wrap = private_saved_tensors if variant == "private" else nullcontext
    t0 = time.perf_counter()
    if variant == "nograd":
        with torch.no_grad():
            unet(noise, 999, encoder_hidden_states=context)
        grad_norm = float("nan")
    else:
        e = noise.clone().requires_grad_(True)
        with wrap():
            out = unet(e, 999, encoder_hidden_states=context).sample
        out.square().mean().backward()
        grad_norm = float(e.grad.norm())
    seconds = time.perf_counter() - t0
    return {"variant": variant, "seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 2 ** 20, "grad_norm": grad_norm}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="image size in px (latent = size / 8)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.threads)))
        return {}
    runs = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "bench.bench_saved_copies", "--child", variant, "--size", str(args.size),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            runs[variant].append(json.loads(out))
            print(f"round {r + 1} {variant:8s} {runs[variant][-1]['seconds']:7.1f} s  "
                  f"peak RSS {runs[variant][-1]['peak_rss_gb']:.2f} GB", flush=True)
    med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in ("seconds", "peak_rss_gb")} for v in VARIANTS}
    kept = {v: med[v]["peak_rss_gb"] - med["nograd"]["peak_rss_gb"] for v in ("plain", "private")}
    summary = {
        "size": args.size, "threads": args.threads, "rounds": args.rounds, "median": med,
        "time_ratio_private_vs_plain": med["private"]["seconds"] / med["plain"]["seconds"],
        "peak_ratio_private_vs_plain": med["private"]["peak_rss_gb"] / med["plain"]["peak_rss_gb"],
        "autograd_memory_gb": kept,
        "autograd_memory_ratio_private_vs_plain": kept["private"] / kept["plain"] if kept["plain"] > 0 else None,
        "same_gradient": runs["plain"][0]["grad_norm"] == runs["private"][0]["grad_norm"],
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
