"""What does one ReNO iteration cost on SDXL-Turbo at true size: Latent-CLIP reward vs decode + pixel CLIP?

Question: per ReNO iteration on SDXL-Turbo's UNet (the one-step x0 from the noise, UNet fwd+bwd, reward
fwd+bwd, regulariser, clip, SGD step), what do the latent path (Latent-ViT-B/8) and the two pixel paths (SDXL-VAE
decode + ViT-B/32, the paper's baseline; decode + ViT-L/14) cost in time and peak memory, and is the time saving
within its FLOP saving? All three paths are measured in this one process (nothing composed), timed in
interleaved repeats on ``clock_for(device)`` (this process's CPU time on the CPU, synchronised wall time on
CUDA) after an untimed warm-up round that holds the process's first backward (:mod:`bench.reno_iteration`).

Models: :mod:`bench.reno_models` (random weights at true size, fp32; on the CPU the weights are file-backed
page cache, so the process's anonymous memory is its activations plus the libraries). A watcher thread
(:class:`bench.memory_guard.MemoryGuard`) ends the run with one line before the process's anonymous memory
passes ``--max-anon-gb`` or the machine's available memory falls below ``--min-available-gb``.

``--end-to-end N`` instead runs one whole ReNO image: ``latent_clip.reno.optimize_noise`` for N evaluations with
the latent reward, then the final sample (the best latent decoded), after an untimed 2-evaluation warm-up, and
gives its seconds (``clock_for(device)`` and wall) and peak memory. A device that is not present exits 2.

    .venv/bin/python -m bench.bench_reno_sdxl --size 256 --repeats 3 [--json out.json]   # CPU, 1 thread
    .venv/bin/python -m bench.bench_reno_sdxl --device cuda --size 512 --json out.json
    .venv/bin/python -m bench.bench_reno_sdxl --device cuda --size 512 --end-to-end 50 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bench.memory import reset_peak, status_gb
from bench.memory_guard import MemoryGuard
from bench.reno_iteration import measure_paths
from bench.reno_models import build, params_m
from bench.timing import clock_for

MODEL = "sdxl-turbo"


def missing_device(device: str) -> str | None:
    """Why ``device`` cannot run here (one line), or None when it can."""
    try:
        d = torch.device(device)
    except RuntimeError:
        return f"unknown device {device!r}: expected cpu or cuda[:index]"
    if d.type == "cpu":
        return None
    if d.type != "cuda":
        return f"device {device!r} is not supported here: expected cpu or cuda[:index]"
    if not torch.cuda.is_available():
        return f"device {device!r} is not present: torch {torch.__version__} sees no CUDA device"
    if (d.index or 0) >= torch.cuda.device_count():
        return f"device {device!r} is not present: {torch.cuda.device_count()} CUDA device(s)"
    return None


def end_to_end(pipeline, noise: torch.Tensor, iterations: int, device: str) -> dict:
    """One whole ReNO image with the latent reward: ``iterations`` evaluations, then the best latent decoded."""
    from latent_clip.reno import optimize_noise

    def image():
        result = optimize_noise(pipeline.generate, pipeline.rewards["latent"], noise, iterations=iterations)
        with torch.no_grad():
            return result, pipeline.decode(result.best_latent)

    warm = optimize_noise(pipeline.generate, pipeline.rewards["latent"], noise, iterations=2)
    with torch.no_grad():
        pipeline.decode(warm.best_latent)
    cuda, clock = device.startswith("cuda"), clock_for(device)
    torch.cuda.reset_peak_memory_stats() if cuda else reset_peak()
    start, wall = clock(), time.perf_counter()
    result, decoded = image()
    seconds, wall = clock() - start, time.perf_counter() - wall
    return {"iterations": iterations, "seconds": seconds, "wall_s": wall,
            "seconds_per_iteration": seconds / iterations,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else status_gb("VmHWM"),
            "image_shape": list(decoded.shape), "image_finite": bool(torch.isfinite(decoded).all()),
            "best_loss": result.best_loss.tolist(), "initial_loss": result.initial_loss.tolist()}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default cpu)")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--end-to-end", type=int, metavar="N", help="time one ReNO image of N evaluations instead")
    ap.add_argument("--max-anon-gb", type=float, default=10.0, help="stop past this anonymous memory (GiB)")
    ap.add_argument("--min-available-gb", type=float, default=2.0, help="stop when the machine has less (GiB)")
    ap.add_argument("--json", help="write one JSON object here")
    ap.add_argument("--beside-burner", action="store_true", help="time beside a CPU-burning neighbour process")
    ap.add_argument("--tiny-unet", action="store_true", help=argparse.SUPPRESS)  # tests only: a toy-width UNet
    args = ap.parse_args(argv)
    if args.size % 8 or args.size < 64:
        ap.error(f"--size must be a multiple of 8 of at least 64, got {args.size}")
    if args.repeats < 1 or (args.end_to_end is not None and args.end_to_end < 1):
        ap.error("--repeats and --end-to-end must be at least 1")
    return args


def run(args) -> dict:
    """Build, then the iteration's paths or one end-to-end image, under the memory guard."""
    out = {"model": MODEL, "device": args.device, "size": args.size, "torch": torch.__version__,
           "threads": args.threads, "tiny_unet": args.tiny_unet,
           "clock": "synchronised wall time" if args.device.startswith("cuda") else "process CPU time"}
    with MemoryGuard(args.max_anon_gb, args.min_available_gb, "bench_reno_sdxl") as guard:
        if not args.end_to_end:
            out.update(measure_paths(MODEL, args.size, args.device, args.repeats, args.tiny_unet,
                                      beside_burner=args.beside_burner))
        else:
            pipeline = build(MODEL, args.size, args.device, ("latent",), args.tiny_unet)
            out["params_m"] = params_m(pipeline)
            noise = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
            out["end_to_end"] = e = end_to_end(pipeline, noise.to(args.device), args.end_to_end, args.device)
            print(f"one ReNO image, {e['iterations']} evaluations + decode: {e['seconds']:.2f} s ({out['clock']}), "
                  f"{e['wall_s']:.2f} s wall, peak {e['peak_gib']:.2f} GiB")
    out["peak_anon_gib"], out["peak_rss_gib"] = guard.peak_anon_gb, guard.peak_rss_gb
    print(f"process peaks (watcher): {guard.peak_anon_gb:.2f} GiB anonymous, {guard.peak_rss_gb:.2f} GiB resident")
    return out


def main(argv=None) -> dict:
    args = parse(argv)
    why = missing_device(args.device)
    if why:
        print(f"bench_reno_sdxl: {why}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), SDXL-Turbo, {args.size} px, "
          f"batch 1, " + (f"one ReNO image of {args.end_to_end} evaluations" if args.end_to_end else
                          f"{args.repeats} interleaved repeats after 1 warm-up round")
          + (", beside a CPU burner" if args.beside_burner else ""), flush=True)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
