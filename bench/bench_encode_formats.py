"""Reading latent shards: the authors' webdataset-latent tar (``latent.pt`` per sample, torch.load)
vs our safetensors shard (one stacked tensor), same latents, same order, in one run.

Readers: ``wds`` = webdataset.WebDataset + torch.load(BytesIO) as the fork's data.py does;
``tar`` = our TarShard (random access in a shard, the fit stream's access pattern);
``safetensors`` = our SafetensorsShard (lazy row slices from the file). Files are in the page
cache after the warm-up round, so this measures decode cost, not disk. Readers are timed in interleaved
repeats on this process's CPU time (bench/timing.py); throughput is samples per CPU second, and each reader's
speed-up over the authors' is the median of the per-repeat ratios with its range.

    .venv/bin/python -m bench.bench_encode_formats [--samples 2048] [--shard-size 256] [--repeats 15]
        [--min-seconds 1] [--load-check]
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
from pathlib import Path

import torch

from bench.timing import Ratio, add_timing_options, format_ratio, interleaved, ratio, run_measurement
from train.data import expand_shards, open_shard, write_latent_shard

READERS = {"wds (authors')": ("wds", "tar"), "tar (ours, random rows)": ("ours", "tar"),
           "safetensors (ours, random rows)": ("ours", "safetensors")}


def read_wds(shards: list[Path]) -> int:
    import webdataset as wds
    n = 0
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        torch.load(io.BytesIO(sample["latent.pt"]), weights_only=True).float()
        sample["txt"].decode()
        n += 1
    return n


def read_ours(shards: list[Path]) -> int:
    n = 0
    for path in shards:
        shard = open_shard(path)
        rows = list(range(len(shard)))
        random.Random(0).shuffle(rows)
        for i in rows:
            shard[i].latent
            n += 1
    return n


def reader(folder: Path, kind: str, samples: int):
    """A call reading every shard in ``folder`` with ``kind``'s reader ("wds" or "ours"), checking the count."""
    read = {"wds": read_wds, "ours": read_ours}[kind]

    def run() -> None:
        if read(expand_shards(folder)) != samples:
            raise RuntimeError(f"{kind} read a wrong number of samples from {folder}: expected {samples}")
    return run


def write_shards(root: Path, samples: int, shard_size: int, shape: tuple[int, ...]) -> dict[str, int]:
    """The same fp16 latents as tar and as safetensors shards under ``root/<format>``; bytes per format."""
    z = torch.randn(samples, *shape).half()
    for fmt, suffix in (("tar", ".tar"), ("safetensors", ".safetensors")):
        for s, start in enumerate(range(0, samples, shard_size)):
            rows = range(start, min(start + shard_size, samples))
            write_latent_shard(root / fmt / f"{s:06d}{suffix}", z[start:rows.stop],
                               [f"caption {i}" for i in rows], [f"{i:08d}" for i in rows])
    return {fmt: sum(f.stat().st_size for f in (root / fmt).iterdir()) for fmt in ("tar", "safetensors")}


def measure(args: argparse.Namespace) -> dict[str, Ratio]:
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as tmp:
        sizes = write_shards(Path(tmp), args.samples, args.shard_size, tuple(args.shape))
        seconds = interleaved({name: reader(Path(tmp) / fmt, kind, args.samples)
                               for name, (kind, fmt) in READERS.items()}, args.repeats,
                              min_seconds=args.min_seconds)
    print(f"{args.samples} latents {tuple(args.shape)} fp16 in shards of {args.shard_size}; "
          f"bytes: tar {sizes['tar']:,}  safetensors {sizes['safetensors']:,}; {torch.get_num_threads()} torch "
          f"threads, CPU time of this process, 1 warm-up + {args.repeats} interleaved repeats")
    base = next(iter(READERS))
    ratios = {}
    for name, t in seconds.items():
        line = f"{name:<34} {args.samples / statistics.median(t):10.0f} samples per CPU s"
        if name != base:
            ratios[f"{name} vs {base}"] = ratio(seconds[base], t)
            line += f"   {format_ratio(ratios[f'{name} vs {base}'])} vs {base}"
        print(line)
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_options(p, repeats=15, min_seconds=1.0)  # a safetensors pass: ~0.06 s
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--shape", type=int, nargs=3, default=(4, 64, 64))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run_measurement(lambda: measure(args), args)


if __name__ == "__main__":
    main()
