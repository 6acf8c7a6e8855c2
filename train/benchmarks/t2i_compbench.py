"""T2I-CompBench(++) validation splits, in the flat naming its scorers read.

    <outdir>/<category>/samples/<prompt>_<NNNNNN>.png

``<category>`` is the split's file stem (``color_val``, ...). ``NNNNNN`` is a running index per
category in prompt order, ``prompt_index * samples + j`` (the paper's 10 images per prompt give
the order the 3-in-1 script hard-codes; ReNO's one image per prompt gives ``NNNNNN`` = prompt
index). The scorers take the prompt from the text before the first ``_`` and ``NNNNNN`` as the
question id; no prompt in these splits contains ``_`` or ``/``. Point each scorer's
``--outpath`` at ``<outdir>/<category>`` (e.g. ``BLIPvqa_eval/BLIP_vqa.py --out_dir
<outdir>/color_val``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from .runner import DATA, Item, add_common_args, decode_pil, image_records, render, run, save_png, setup

CATEGORIES = ("color_val", "shape_val", "texture_val", "spatial_val", "non_spatial_val", "complex_val")
PLUS = ("numeracy_val", "3d_spatial_val")


def default_dataset() -> Path:
    return DATA / "t2i_compbench"


def read_prompts(path: Path) -> list[str]:
    """Mixed CRLF/LF, some without a final newline: splitlines + strip."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_items(dataset: str | Path, categories: Sequence[str], limit: int | None = None) -> list[Item]:
    items = []
    for category in categories:
        prompts = read_prompts(Path(dataset) / f"{category}.txt")[:limit]
        for i, prompt in enumerate(prompts):
            if "_" in prompt or "/" in prompt:
                raise ValueError(f"{category} prompt {i} contains '_' or '/', which breaks the file-name layout")
            items.append(Item(len(items), f"{category}/{i}", prompt, {"category": category, "prompt_index": i}))
    return items


def file_name(prompt: str, index: int) -> str:
    return f"{prompt}_{index:06d}.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train bench t2i-compbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(default_dataset()), help="folder of <category>.txt files")
    p.add_argument("--categories", default=",".join(CATEGORIES),
                   help=f"comma-separated split names; CompBench++ adds {','.join(PLUS)}")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    items = load_items(args.dataset, [c.strip() for c in args.categories.split(",") if c.strip()], args.limit)
    s = setup(args)
    outdir = Path(args.outdir)
    seeds = [args.seed + j for j in range(args.samples)]

    def process(item: Item) -> list[dict]:
        category, p = item.meta["category"], item.meta["prompt_index"]
        records = []
        for b in range(0, len(seeds), args.batch_size):
            chunk = seeds[b:b + args.batch_size]
            out = render(s, args, item.prompt, chunk)
            names = [file_name(item.prompt, p * len(seeds) + j) for j in range(b, b + len(chunk))]
            for name, image in zip(names, decode_pil(s.gen, out.latents)):
                save_png(image, outdir / category / "samples" / name)
            if args.baseline_dir:
                for name, image in zip(names, decode_pil(s.gen, out.initial)):
                    save_png(image, Path(args.baseline_dir) / category / "samples" / name)
            recs = image_records(item, out, chunk, [f"{category}/samples/{n}" for n in names], category=category)
            for j, rec in zip(range(b, b + len(chunk)), recs):
                rec["sample"] = j
            records += recs
        return records

    def by_category(records: list[dict]) -> dict:
        cats = {}
        for r in records:
            total = r.get("losses", {}).get("total")
            if total:
                cats.setdefault(r["category"], []).append(total["initial"] - total["best"])
        return {"gain_by_category": {c: sum(v) / len(v) for c, v in cats.items()}}

    return run("t2i-compbench", items, process, outdir, s.rank, s.device, s.timer, args.summary_wait, by_category)
