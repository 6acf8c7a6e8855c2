"""What does one ReNO iteration cost with the Latent-CLIP reward, against the pixel paths? (SD-Turbo)

Question: per ReNO iteration on SD-Turbo's UNet (the one-step x0 from the noise, UNet fwd+bwd, reward fwd+bwd,
regulariser, clip, SGD step), how much does the Latent-ViT-B/8 reward save against decode + ViT-B/32 (the paper's
baseline) and decode + ViT-L/14, and is the time saving within its FLOP saving? The three paths run in this one
process, timed in interleaved repeats on this process's CPU time after an untimed warm-up round that holds the
process's first backward (:mod:`bench.reno_iteration`); each ratio is the median of the per-repeat ratios with
their range, printed beside the FLOP ratio of the same iteration (FlopCounterMode on meta tensors).

Models: :mod:`bench.reno_models` (the SD-2.1-base UNet config, 866 M params, the SD VAE decoder, pixel CLIPs
from ``build_pixel_clip``, Latent-ViT-B-8-512; random weights at true size, fp32, file-backed on the CPU). A
watcher thread (:class:`bench.memory_guard.MemoryGuard`) stops the run with one line before the process's
anonymous memory passes ``--max-anon-gb`` or the machine's available memory falls below ``--min-available-gb``.
``--beside-burner`` runs the timed rounds beside a CPU-burning process (:func:`bench.timing.busy_neighbour`):
the ratios should agree with a run alone.

    .venv/bin/python -m bench.bench_reno --size 384 --repeats 3 [--beside-burner] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.memory_guard import MemoryGuard
from bench.reno_iteration import measure_paths

MODEL = "sd-turbo"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=384, help="image size in px (latent = size / 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--beside-burner", action="store_true", help="time beside a CPU-burning neighbour process")
    ap.add_argument("--max-anon-gb", type=float, default=10.0, help="stop past this anonymous memory (GiB)")
    ap.add_argument("--min-available-gb", type=float, default=2.0, help="stop when the machine has less (GiB)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)
    if args.size % 8 or args.size < 64 or args.repeats < 1:
        ap.error(f"--size must be a multiple of 8 of at least 64 and --repeats at least 1, got {args.size}, "
                 f"{args.repeats}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), SD-Turbo, {args.size} px, batch 1, {args.repeats} "
          f"interleaved repeats after 1 warm-up round, CPU time" + (", beside a CPU burner" if args.beside_burner
                                                                     else ""), flush=True)
    with MemoryGuard(args.max_anon_gb, args.min_available_gb, "bench_reno") as guard:
        out = measure_paths(MODEL, args.size, "cpu", args.repeats, beside_burner=args.beside_burner)
    out.update(args=vars(args), torch=torch.__version__, peak_anon_gib=guard.peak_anon_gb,
               peak_rss_gib=guard.peak_rss_gb)
    print(f"process peaks (watcher): {guard.peak_anon_gb:.2f} GiB anonymous, {guard.peak_rss_gb:.2f} GiB resident")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
