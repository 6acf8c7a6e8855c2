"""GenEval (Ghosh et al. 2023): 553 prompts, N images each, in the folder layout its evaluator reads.

    <outdir>/00000/metadata.jsonl     the prompt's line of evaluation_metadata.jsonl (one JSON object)
    <outdir>/00000/samples/0000.png   sample j (seed = --seed + j; ReNO uses seeds 0-3)
    <outdir>/00000/grid.png           with --grid

Then, in GenEval's own environment (CUDA, mmdet 2.x):
    python evaluation/evaluate_images.py <outdir> --outfile results.jsonl --model-path <detector dir>
    python evaluation/summary_scores.py results.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from .runner import DATA, Item, add_common_args, decode_pil, grid, image_records, render, run, save_png, setup


def default_metadata() -> Path:
    return DATA / "geneval/evaluation_metadata.jsonl"


def load_items(path: str | Path, limit: int | None = None) -> list[Item]:
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    items = []
    for i, line in enumerate(lines[:limit]):
        meta = json.loads(line)
        items.append(Item(i, f"{i:0>5}", meta["prompt"], {"line": line, "tag": meta.get("tag")}))
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train bench geneval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", default=str(default_metadata()), help="GenEval evaluation_metadata.jsonl")
    p.add_argument("--grid", action="store_true", help="also write grid.png per prompt")
    add_common_args(p)
    p.set_defaults(samples=4)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    items = load_items(args.metadata, args.limit)
    s = setup(args)
    outdir = Path(args.outdir)
    seeds = [args.seed + j for j in range(args.samples)]

    def process(item: Item) -> list[dict]:
        records = []
        for b in range(0, len(seeds), args.batch_size):
            chunk = seeds[b:b + args.batch_size]
            out = render(s, args, item.prompt, chunk)
            images = decode_pil(s.gen, out.latents)
            if args.baseline_dir:
                base = decode_pil(s.gen, out.initial)
                for j, image in zip(range(b, b + len(chunk)), base):
                    save_png(image, Path(args.baseline_dir) / item.key / "samples" / f"{j:04d}.png")
            for j, image in zip(range(b, b + len(chunk)), images):
                save_png(image, outdir / item.key / "samples" / f"{j:04d}.png")
            files = [f"{item.key}/samples/{j:04d}.png" for j in range(b, b + len(chunk))]
            recs = image_records(item, out, chunk, files, tag=item.meta["tag"])
            for j, rec in zip(range(b, b + len(chunk)), recs):
                rec["sample"] = j
            records += recs
        folder = outdir / item.key
        if args.grid:
            from PIL import Image
            save_png(grid([Image.open(folder / "samples" / f"{j:04d}.png").convert("RGB") for j in range(len(seeds))]),
                     folder / "grid.png")
        (folder / "metadata.jsonl").write_text(item.meta["line"] + "\n", encoding="utf-8")
        if args.baseline_dir:
            (Path(args.baseline_dir) / item.key / "metadata.jsonl").write_text(item.meta["line"] + "\n",
                                                                              encoding="utf-8")
        return records

    return run("geneval", items, process, outdir, s.rank, s.device, s.timer, args.summary_wait)
