"""T2I-CompBench(++) validation splits, in the flat naming its scorers read.

    <outdir>/<category>/samples/<prompt>_<NNNNNN>.png

``<category>`` is the split's file stem (``color_val``, ...). ``NNNNNN`` is a running index per
category in prompt order, ``prompt_index * samples + j``. The protocol (its
``GORS_finetune/inference_eval.py``): 10 images per prompt, image j from seed 42 + j; the 3-in-1
scorer of ``complex_val`` hard-codes those 10. The scorers take the prompt from the text before
the first ``_`` and ``NNNNNN`` as the question id; no prompt in these splits contains ``_`` or
``/``. Each PNG appears whole (written aside, then renamed), so ``samples/`` can be scored at any
moment. Which scorer reads which category, and from where: docs/evaluators.md (T2I-CompBench).

``--revision 2023-07`` (default) is the prompt set of the papers (ReNO, Latent-CLIP);
``2025-09`` is upstream's later colour revision, the bundled file (see data/README.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .runner import (DATA, GenerationSettings, Item, add_common_args, claim_outdir, load_resources, parse,
                     render_and_save, run, run_settings)
from .settings import settings_from

CATEGORIES = ("color_val", "shape_val", "texture_val", "spatial_val", "non_spatial_val", "complex_val")
PLUS = ("numeracy_val", "3d_spatial_val")
REVISIONS = ("2023-07", "2025-09")  # upstream commits 7710d05 and 3310c2f (data/README.md)
# Upstream changed one split after the papers: 3310c2f ("remove duplicates", the bundled color_val.txt) rewrote five
# prompts that its first revision 7710d05 repeated. Per split: {line: the line it repeated in 2023} (1-based), and
# the sha256 of the 2023 file, which restoring the repeats reproduces byte for byte.
REPEATS_2023 = {"color_val": ({228: 207, 229: 208, 272: 271, 288: 287, 300: 299},
                              "1e37a12c1861bf6b11623eaffb0bf6d6eeea9702caf45b95d040f1721bba7f4f")}


# category -> (official scorer, the result file it writes under <outdir>/<category>/): docs/evaluators.md
SCORERS = {
    **dict.fromkeys(("color_val", "shape_val", "texture_val"), ("BLIPvqa_eval/BLIP_vqa.py",
                                                                "annotation_blip/vqa_result.json")),
    "spatial_val": ("UniDet_eval/2D_spatial_eval.py", "labels/annotation_obj_detection_2d/vqa_result.json"),
    "non_spatial_val": ("CLIPScore_eval/CLIP_similarity.py", "annotation_clip/vqa_result.json"),
    "complex_val": ("3_in_1_eval/3_in_1.py", "annotation_3_in_1/vqa_result.json"),
    "numeracy_val": ("UniDet_eval/numeracy_eval.py", "annotation_num/vqa_result.json"),
    "3d_spatial_val": ("UniDet_eval/3D_spatial_eval.py", "labels/annotation_obj_detection_3d/vqa_result.json"),
}


def read_evaluation(outdir: str | Path, categories: Sequence[str]) -> dict:
    """Per category with a result file: ``score``, the mean ``answer`` of its ``vqa_result.json``
    (the average every scorer prints), ``images`` scored and ``samples`` on disk (they differ when a
    scorer ran on a partial folder)."""
    out = {}
    for category in (c for c in categories if c in SCORERS):
        path = Path(outdir) / category / SCORERS[category][1]
        if not path.is_file():
            continue
        try:
            answers = [float(r["answer"]) for r in json.loads(path.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a T2I-CompBench vqa_result.json ([{{question_id, answer}}, ...]): "
                             f"{err}") from None
        if not answers or not all(math.isfinite(a) for a in answers):
            raise ValueError(f"{path}: {len(answers)} answers, {'none' if not answers else 'some not finite'}")
        samples = Path(outdir) / category / "samples"
        out[category] = {"score": sum(answers) / len(answers), "images": len(answers),
                         "samples": len(list(samples.glob("*.png"))) if samples.is_dir() else 0}
    return out


def read_prompts(data: bytes) -> list[str]:
    """A split file's prompts. Mixed CRLF/LF, some without a final newline: splitlines + strip."""
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def prompt_bytes(dataset: str | Path, category: str, revision: str = REVISIONS[0]) -> bytes:
    """``<dataset>/<category>.txt`` as ``revision`` had it. For 2023-07, a split that upstream changed
    later gets its repeated lines back (each keeps its own line ending); a file that is neither
    revision of that split is refused rather than altered."""
    path = Path(dataset) / f"{category}.txt"
    data = path.read_bytes()
    if revision != "2023-07" or category not in REPEATS_2023:
        return data
    repeats, digest = REPEATS_2023[category]
    if hashlib.sha256(data).hexdigest() == digest:
        return data
    lines = data.splitlines(keepends=True)
    for line, source in repeats.items():
        if line <= len(lines):
            text = lines[line - 1].rstrip(b"\r\n")
            lines[line - 1] = lines[source - 1].rstrip(b"\r\n") + lines[line - 1][len(text):]
    rebuilt = b"".join(lines)
    if hashlib.sha256(rebuilt).hexdigest() != digest:
        raise ValueError(f"{path} is neither revision of upstream's {category}.txt, so its 2023-07 prompts cannot "
                         f"be rebuilt (expected sha256 {digest} after restoring lines {sorted(repeats)}); "
                         "pass --revision 2025-09 to read the file as it is")
    return rebuilt


def load_items(dataset: str | Path, categories: Sequence[str], limit: int | None = None,
               revision: str = REVISIONS[0]) -> list[Item]:
    """The first ``limit`` prompts of each category. Item indices count through the full splits in
    ``categories`` order, so they (the resume keys) do not depend on ``limit``."""
    items, offset = [], 0
    for category in categories:
        prompts = read_prompts(prompt_bytes(dataset, category, revision))
        for i, prompt in enumerate(prompts[:limit]):
            if "_" in prompt or "/" in prompt:
                raise ValueError(f"{category} prompt {i} contains '_' or '/', which breaks the file-name layout")
            items.append(Item(offset + i, f"{category}/{i}", prompt, {"category": category, "prompt_index": i}))
        offset += len(prompts)
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train bench t2i-compbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DATA / "t2i_compbench"), help="folder of <category>.txt files")
    p.add_argument("--categories", default=",".join(CATEGORIES),
                   help=f"comma-separated split names; CompBench++ adds {','.join(PLUS)}")
    p.add_argument("--revision", choices=REVISIONS, default=REVISIONS[0],
                   help="prompt revision: 2023-07 as in the papers (default), 2025-09 upstream's colour fix")
    add_common_args(p)
    p.set_defaults(samples=10, seed=42)
    return parse(p, argv)


@dataclass(frozen=True)
class T2ICompBenchSettings:
    """``bench t2i-compbench``'s options (:func:`parse_args`), typed."""

    dataset: str                        # folder of <category>.txt files
    categories: str                     # comma-separated split names
    revision: str                       # one of REVISIONS
    generation: GenerationSettings


def main(argv: Sequence[str] | None = None) -> dict | None:
    settings = settings_from(T2ICompBenchSettings, parse_args(argv))
    generation, dataset, revision = settings.generation, settings.dataset, settings.revision
    categories = [c.strip() for c in settings.categories.split(",") if c.strip()]
    items = load_items(dataset, categories, generation.limit, revision)
    files = {f"prompts/{c}": prompt_bytes(dataset, c, revision) for c in categories}
    claim_outdir(generation.outdir, "t2i-compbench", run_settings(settings, files, skip=("dataset",)))
    resources = load_resources(generation)

    def process(item: Item) -> list[dict]:
        category, p, samples = item.meta["category"], item.meta["prompt_index"], generation.samples
        names = [f"{category}/samples/{item.prompt}_{p * samples + j:06d}.png" for j in range(samples)]
        return render_and_save(resources, generation, item, names, category=category)

    def by_category(records: list[dict]) -> dict:
        cats = {}
        for r in records:
            total = r.get("losses", {}).get("total")
            if total:
                cats.setdefault(r["category"], []).append(total["initial"] - total["best"])
        return {"gain_by_category": {c: sum(v) / len(v) for c, v in cats.items()}}

    return run("t2i-compbench", items, process, resources, generation.outdir, generation.summary_wait, by_category)
