"""Encode image-caption data to raw VAE latents, as Latent-CLIP trains on.

Input: webdataset image shards (img2dataset: ``.jpg``/``.png`` + ``.txt``) or an image folder with
captions (``captions.jsonl``/``.csv`` or ``stem.txt``), or an ImageNet-style folder with
``--labels-from-folders`` (captions = class names, ``cls`` stored, ``classnames.txt`` written).
Images: shorter side resized to ``--size`` (bicubic, antialiased), centre-cropped, mapped to
[-1, 1], encoded by a local diffusers AutoencoderKL; the posterior mean is stored (``--sample``
for a posterior sample), raw (no scaling factor), as ``--store-dtype``.

Output shard i (one per input shard, or per ``--shard-size`` folder images) is written
atomically, so a rerun skips finished shards. Bad data is skipped, counted and reported (the
summary line, ``encode.json``): undecodable or oversized images, images without a caption, captions
that are not UTF-8 or lines of a caption file that do not parse, and truncated or corrupt input tars
(no output, so a rerun retries them). Under torchrun rank r encodes shards i % world == r:

    python -m train encode --input 'laion/{00000..00999}.tar' --vae sdxl-vae/ --out latents/
    torchrun --nproc_per_node 8 -m train encode --input imgs/ --vae vae.safetensors --vae-config sdxl-vae/ \\
        --out latents/ --format safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from latent_clip.factory import DTYPES
from latent_clip.files import atomic_write

from .data import (SIZES_FILE, CaptionError, FolderShard, ImageTooLarge, ImageTransform, Problem, ProblemLog,
                   ShardError, TarShard, expand_shards, folder_rows, write_latent_shard, write_sizes)
from .distributed import barrier, cleanup, init_distributed
from .models import load_vae

SUFFIX = {"wds": ".tar", "safetensors": ".safetensors"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="image tar shards (dir/glob/braces) or an image folder")
    p.add_argument("--captions", help="captions.jsonl/.csv for a folder (default: found in the folder)")
    p.add_argument("--labels-from-folders", action="store_true", help="ImageNet-style folder: class = sub-folder")
    p.add_argument("--vae", required=True, help="local diffusers AutoencoderKL: folder or .safetensors")
    p.add_argument("--vae-config", help="diffusers config folder for a single-file VAE")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=list(SUFFIX), default="wds",
                   help="wds: the authors' webdataset-latent tar (latent.pt + txt); safetensors: one tensor per shard")
    p.add_argument("--size", type=int, default=512, help="pixels (512 for the SDXL Latent-CLIPs)")
    p.add_argument("--sample", action="store_true", help="store a posterior sample instead of the mean")
    p.add_argument("--seed", type=int, default=0, help="for --sample (per shard: seed + shard index)")
    p.add_argument("--store-dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--compute-dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1000, help="images per output shard for folder input")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def input_shards(args: argparse.Namespace, problems: list[Problem]) -> tuple[list[tuple[str, object]], list[str]]:
    """(output stem, reader factory) per output shard, and class names for labelled folders.
    Captions that cannot be read are skipped and appended to ``problems``."""
    src = Path(args.input)
    if src.is_dir() and not any(p.suffix == ".tar" for p in src.iterdir()):
        rows, classes = folder_rows(src, args.captions, args.labels_from_folders, problems)
        chunks = [rows[i:i + args.shard_size] for i in range(0, len(rows), args.shard_size)]
        return [(f"{i:06d}", lambda c=c: FolderShard(c)) for i, c in enumerate(chunks)], classes
    return [(p.stem, lambda p=p: TarShard(p)) for p in expand_shards(args.input) if p.suffix == ".tar"], []


@torch.no_grad()
def encode_shard(reader, vae, transform: ImageTransform, args, generator, problems: list[Problem]) -> dict:
    """Encode every readable image of one shard -> columns; unreadable images and captions are
    skipped and appended to ``problems``."""
    latents, samples = [], []
    batch: list[tuple[torch.Tensor, object]] = []

    def flush():
        x = torch.stack([t for t, _ in batch]).to(vae.device, vae.dtype)
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator=generator) if args.sample else dist.mean
        latents.append(z.to("cpu", DTYPES[args.store_dtype]))
        samples.extend(s for _, s in batch)
        batch.clear()

    for i in range(len(reader)):
        try:
            sample = reader[i]
        except ShardError as err:
            problems.append(Problem("bad_caption" if isinstance(err, CaptionError) else "skipped_sample",
                                    f"{getattr(reader, 'path', 'folder')} row {i}", str(err)))
            continue
        where = str(sample.image_path or f"{reader.path} sample {sample.key}")
        if not sample.caption.strip() and sample.label < 0:  # a labelled image's class name is its caption
            problems.append(Problem("missing_caption", where, "no caption; image skipped"))
            continue
        try:
            batch.append((transform(sample.image()), sample))
        except ImageTooLarge as err:
            problems.append(Problem("skipped_sample", where, f"image of {err}"))
            continue
        except Exception as err:  # noqa: BLE001 - any undecodable image is counted and skipped
            problems.append(Problem("skipped_sample", where, f"unreadable image ({type(err).__name__})"))
            continue
        if len(batch) == args.batch_size:
            flush()
    if batch:
        flush()
    z = torch.cat(latents) if latents else torch.empty(0)
    return {"latents": z, "captions": [s.caption for s in samples], "keys": [s.key for s in samples],
            "labels": [s.label for s in samples]}


def main(argv: Sequence[str] | None = None) -> dict:
    """Encode; returns the counts (summed over ranks): shards written / already there, samples,
    and what was skipped: ``corrupt`` images (unreadable or over ``MAX_IMAGE_PIXELS``), ``corrupt_shards``,
    ``bad_captions``, ``missing_captions``."""
    args = parse_args(argv)
    env = init_distributed(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = ProblemLog(prefix=f"encode rank {env.rank} warning")
    found: list[Problem] = []
    units, classes = input_shards(args, found)
    log.add(found if env.is_master else ())  # every rank lists the same folder
    if not units:
        raise ValueError(f"{args.input}: no images with captions and no .tar shards found, so nothing to encode "
                         f"(expected an image folder with captions, or img2dataset tars)")
    mine = [(i, stem, make) for i, (stem, make) in enumerate(units) if i % env.world_size == env.rank]
    vae = load_vae(args.vae, env.device, DTYPES[args.compute_dtype], args.vae_config)
    transform = ImageTransform(args.size)
    stats = {"written": 0, "skipped": 0, "samples": 0}
    for i, stem, make in tqdm(mine, desc=f"encode rank {env.rank}", disable=not env.is_master, unit="shard"):
        target = out / (stem + SUFFIX[args.format])
        if target.is_file():
            stats["skipped"] += 1
            continue
        generator = torch.Generator(env.device).manual_seed(args.seed + i) if args.sample else None
        try:
            reader = make()
        except ShardError as err:  # no output: fixing the shard and rerunning encodes it
            log.add([Problem("corrupt_shard", stem, f"{err}; not encoded")])
            continue
        found = []
        cols = encode_shard(reader, vae, transform, args, generator, found)
        log.add(found)
        if len(cols["keys"]):
            write_latent_shard(target, cols["latents"], cols["captions"], cols["keys"], cols["labels"])
            stats["written"] += 1
            stats["samples"] += len(cols["keys"])
    counts = log.counts()
    stats.update(corrupt=counts["skipped_samples"], corrupt_shards=counts["corrupt_shards"],
                 bad_captions=counts["bad_captions"], missing_captions=counts["missing_captions"])
    print(f"encode rank {env.rank}: {json.dumps(stats)}", flush=True)
    if env.distributed:
        totals = torch.tensor(list(stats.values()), dtype=torch.long, device=env.device)  # nccl: on the GPU
        torch.distributed.all_reduce(totals)
        stats = dict(zip(stats, totals.tolist()))
    barrier(env)
    if env.is_master:
        write_sizes(out)
        if classes:
            names = "\n".join(c.replace("_", " ") for c in classes) + "\n"
            atomic_write(out / "classnames.txt", lambda t: t.write_text(names))
        meta = {"vae": str(args.vae), "size": args.size, "posterior": "sample" if args.sample else "mean",
                "store_dtype": args.store_dtype, "format": args.format, "scaling": "raw (unscaled)",
                "latent_channels": vae.config.latent_channels, "sizes": SIZES_FILE, "last_run": stats}
        atomic_write(out / "encode.json", lambda t: t.write_text(json.dumps(meta, indent=2)))
    cleanup(env)
    return stats
