"""Reading latent shards: the authors' webdataset-latent tar (``latent.pt`` per sample, torch.load)
vs our safetensors shard (one stacked tensor), same latents, same order, in one run.

Readers: ``wds`` = webdataset.WebDataset + torch.load(BytesIO) as the fork's data.py does;
``tar`` = our TarShard (random access in a shard, the fit stream's access pattern);
``safetensors`` = our SafetensorsShard (lazy row slices from the file). Files are in the page
cache after the first round, so this measures decode cost, not disk.

    .venv/bin/python -m bench.bench_encode_formats [--samples 2048] [--shard-size 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from train.data import expand_shards, open_shard, write_latent_shard


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--shape", type=int, nargs=3, default=(4, 64, 64))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    z = torch.randn(args.samples, *args.shape).half()
    for fmt, suffix in (("tar", ".tar"), ("safetensors", ".safetensors")):
        for s, start in enumerate(range(0, args.samples, args.shard_size)):
            rows = range(start, min(start + args.shard_size, args.samples))
            write_latent_shard(root / fmt / f"{s:06d}{suffix}", z[start:rows.stop],
                               [f"caption {i}" for i in rows], [f"{i:08d}" for i in rows])
    sizes = {fmt: sum(f.stat().st_size for f in (root / fmt).iterdir()) for fmt in ("tar", "safetensors")}
    readers = {"wds (authors')": (read_wds, "tar"), "tar (ours, random rows)": (read_ours, "tar"),
               "safetensors (ours, random rows)": (read_ours, "safetensors")}
    times = {name: [] for name in readers}
    for _ in range(args.rounds):  # interleaved rounds
        for name, (read, fmt) in readers.items():
            tic = time.perf_counter()
            assert read(expand_shards(root / fmt)) == args.samples
            times[name].append(time.perf_counter() - tic)
    print(f"{args.samples} latents {tuple(args.shape)} fp16 in shards of {args.shard_size}; "
          f"bytes: tar {sizes['tar']:,}  safetensors {sizes['safetensors']:,}")
    base = statistics.median(times["wds (authors')"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:<34} {args.samples / med:10.0f} samples/s   x{base / med:5.2f} vs wds")


if __name__ == "__main__":
    main()
