"""``python -m train bench table RUN_DIR...``: the paper's table rows from the official evaluators'
output files, one row per run (I2P: one per variant), beside the seconds each image took to make.

- GenEval: ``<run>/results.jsonl`` (evaluate_images.py) -> its 6 tasks and the overall score;
- T2I-CompBench: each category's ``vqa_result.json`` (its scorer's) -> Color, Shape, Texture,
  Spatial, Non-spatial, Complex (and CompBench++'s Numeracy, 3D-spatial when present);
- I2P: ``<run>/<variant>/i2p_results.csv`` (what results_I2P.py reads) -> the inappropriate
  probability overall and per category, and the expected maximum inappropriateness.

``s/image`` is the mean wall time per image from the run's records (generation, ReNO, decoding and
saving; not scoring the images). An I2P run makes both variants at once, so its time stands on
the guided row, per guided image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from . import geneval, i2p, t2i_compbench
from .runner import RUN_FILE, cell, read_records, summarise_records

COLUMNS = {  # (key in a row, column title), in the papers' order
    "geneval": list(zip(geneval.TASKS, ("Single", "Two obj.", "Counting", "Colors", "Position", "Color attr.")))
    + [("overall", "Overall")],
    "t2i-compbench": list(zip(t2i_compbench.CATEGORIES + t2i_compbench.PLUS, (
        "Color", "Shape", "Texture", "Spatial", "Non-spatial", "Complex", "Numeracy", "3D-spatial"))),
    "i2p": [("all", "Overall"), ("expected_max", "Exp. max")] + [(c, c) for c in i2p.CATEGORIES],
}


def seconds_per_image(records: list[dict]) -> float | None:
    times = summarise_records(records)["time_per_image"]
    return None if times["total"] is None else times["total"] - (times.get("classify") or 0.0)


def geneval_gaps(scores: dict) -> list[str]:
    """What a GenEval row lacks against the whole benchmark (its prompts, its six tasks): its Overall then
    averages only what was scored, so the table says so."""
    total = len(geneval.load_items(geneval.METADATA))
    gaps = [f"{scores['prompts']}/{total} prompts scored"] if scores["prompts"] < total else []
    missing = [t for t in geneval.TASKS if t not in scores]
    return gaps + ([f"no {', '.join(missing)} results (Overall averages the tasks present)"] if missing else [])


def rows_for(run_dir: str | Path) -> tuple[str, list[dict]]:
    """(benchmark, rows): each row ``{"run", "images", "s_per_image", <column key>: score}``."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no {RUN_FILE})")
    run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    benchmark, records = run["benchmark"], read_records(run_dir)
    if benchmark == "geneval":
        scores = geneval.read_evaluation(run_dir)
        return benchmark, [{"run": run_dir.name, "s_per_image": seconds_per_image(records),
                            "incomplete": geneval_gaps(scores), **scores}]
    if benchmark == "t2i-compbench":
        categories = [c.strip() for c in run["options"]["categories"].split(",")]
        scores = t2i_compbench.read_evaluation(run_dir, categories)
        if not scores:
            raise FileNotFoundError(f"no T2I-CompBench scorer results under {run_dir}/<category>/ (docs/evaluators.md: "
                                    "which scorer writes what)")
        row = {c: v["score"] for c, v in scores.items()}
        partial = {c: f"{v['images']}/{v['samples']}" for c, v in scores.items() if v["images"] != v["samples"]}
        missing = [f"{c} ({t2i_compbench.SCORERS[c][0]})" for c in categories
                   if c in t2i_compbench.SCORERS and c not in scores]
        return benchmark, [{"run": run_dir.name, "images": sum(v["images"] for v in scores.values()),
                            "s_per_image": seconds_per_image(records), "partial": partial, "missing": missing,
                            **row}]
    if benchmark == "i2p":
        scores = i2p.read_evaluation(run_dir)
        if not scores:
            raise FileNotFoundError(f"no I2P results in {run_dir}/<variant>/ (run with --q16 ... --nudenet ..., or "
                                    "refresh them with python -m train bench summary)")
        guided = [r for r in records if r.get("variant") == "guided"]
        rows = []
        for variant, metrics in scores.items():
            row = {c: m["inappropriate"] for c, m in metrics.items()}
            rows.append({"run": f"{run_dir.name} ({variant})", "images": metrics["all"]["images"],
                         "s_per_image": seconds_per_image(records) * len(records) / len(guided)
                         if variant == "guided" and guided else None,
                         "expected_max": metrics["all"]["expected_max"], **row})
        return benchmark, rows
    raise ValueError(f"{run_dir}: bench table reads geneval, t2i-compbench and i2p runs, not {benchmark!r}")


def format_table(benchmark: str, rows: list[dict]) -> str:
    columns = [(k, name, max(12, len(name) + 2)) for k, name in COLUMNS[benchmark] if any(k in r for r in rows)]
    width = max(len(r["run"]) for r in rows) + 2
    lines = [f"== {benchmark}", f"{'run':<{width}}" + "".join(f"{name:>{w}}" for _, name, w in columns) +
             f"{'images':>9}{'s/image':>10}"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}" + "".join(f"{cell(r.get(k)):>{w}}" for k, _, w in columns) +
                     f"{cell(r.get('images'), 'd'):>9}{cell(r['s_per_image'], '.2f'):>10}")
        if r.get("partial"):
            lines.append("  scored images / images on disk differ: " +
                         ", ".join(f"{c} {v}" for c, v in r["partial"].items()))
        if r.get("missing"):
            lines.append("  not scored yet: " + ", ".join(r["missing"]))
        if r.get("incomplete"):
            lines.append("  partial run: " + "; ".join(r["incomplete"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return {}
    tables: dict[str, list[dict]] = {}
    for run_dir in argv:
        benchmark, rows = rows_for(run_dir)
        tables.setdefault(benchmark, []).extend(rows)
    print("\n\n".join(format_table(b, rows) for b, rows in tables.items()))
    return tables
