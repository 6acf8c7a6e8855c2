"""GenEval (Ghosh et al. 2023): 553 prompts, N images each, in the folder layout its evaluator reads.

    <outdir>/00000/metadata.jsonl     the prompt's line of evaluation_metadata.jsonl (one JSON object)
    <outdir>/00000/samples/0000.png   sample j (seed = --seed + j; the protocol: 4 samples, seeds 0-3)
    <outdir>/00000/grid.png           with --grid

A prompt folder appears with its metadata.jsonl and samples/ at once, and each PNG appears whole,
so the evaluator reads any state of the folder (mid-run, or after a kill). Then, in GenEval's own
environment (CUDA, mmdet 2.x):
    python evaluation/evaluate_images.py <outdir> --outfile <outdir>/results.jsonl --model-path <detector dir>
    python -m train bench table <outdir>      (or GenEval's evaluation/summary_scores.py <outdir>/results.jsonl)
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .runner import (DATA, GenerationSettings, Item, add_common_args, claim_outdir, grid, load_resources, parse,
                     render_and_save, run, run_settings)
from .settings import settings_from

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
METADATA = DATA / "geneval/evaluation_metadata.jsonl"
EVALUATION = "results.jsonl"  # evaluate_images.py <outdir> --outfile <outdir>/results.jsonl


def read_evaluation(outdir: str | Path) -> dict:
    """GenEval's ``results.jsonl`` (one JSON object per image, as its evaluate_images.py writes it)
    -> share of correct images per task and ``overall``, their unweighted mean over the tasks
    present (summary_scores.py's "Overall score"), ``images`` and ``prompts`` (prompt folders scored)."""
    path = Path(outdir) / EVALUATION
    if not path.is_file():
        raise FileNotFoundError(f"no GenEval results in {outdir}: run GenEval's evaluation/evaluate_images.py "
                                f"{outdir} --outfile {path}")
    by_task: dict[str, list[bool]] = {}
    prompt_folders = set()  # <outdir>/<prompt>/samples/<j>.png: the prompts scored
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_task.setdefault(rec["tag"], []).append(bool(rec["correct"]))
            prompt_folders.add(Path(str(rec.get("filename", ""))).parent.parent.name)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {n}: not a GenEval result record with 'tag' and 'correct' ({err})") from None
    if not by_task:
        raise ValueError(f"{path}: no results")
    tasks = {t: sum(v) / len(v) for t, v in by_task.items()}
    return {**tasks, "overall": sum(tasks.values()) / len(tasks), "images": sum(map(len, by_task.values())),
            "prompts": len(prompt_folders)}


def load_items(path: str | Path, limit: int | None = None) -> list[Item]:
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    return [Item(i, f"{i:0>5}", meta["prompt"], {"line": line, "tag": meta.get("tag")})
            for i, (line, meta) in enumerate(zip(lines, map(json.loads, lines)))]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train bench geneval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", default=str(METADATA), help="GenEval evaluation_metadata.jsonl")
    p.add_argument("--grid", action="store_true", help="also write grid.png per prompt")
    add_common_args(p)
    p.set_defaults(samples=4, seed=0)
    return parse(p, argv)


@dataclass(frozen=True)
class GenevalSettings:
    """``bench geneval``'s options (:func:`parse_args`), typed."""

    metadata: str                       # GenEval's evaluation_metadata.jsonl
    grid: bool                          # also write grid.png per prompt
    generation: GenerationSettings


def main(argv: Sequence[str] | None = None) -> dict | None:
    settings = settings_from(GenevalSettings, parse_args(argv))
    generation = settings.generation
    items = load_items(settings.metadata, generation.limit)
    claim_outdir(generation.outdir, "geneval", run_settings(settings, {"metadata": settings.metadata}))
    resources = load_resources(generation)
    images = resources.images

    def process(item: Item) -> list[dict]:
        for tree in filter(None, (images, resources.baseline_images)):  # metadata.jsonl + samples/ before any image
            tree.folder(item.key, {"metadata.jsonl": item.meta["line"] + "\n"}, ("samples",))
        files = [f"{item.key}/samples/{j:04d}.png" for j in range(generation.samples)]
        records = render_and_save(resources, generation, item, files, tag=item.meta["tag"])
        if settings.grid:
            from PIL import Image
            images.save_png(f"{item.key}/grid.png", grid([Image.open(images.root / f).convert("RGB") for f in files]))
        return records

    return run("geneval", items, process, resources, generation.outdir, generation.summary_wait)
