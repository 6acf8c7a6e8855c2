"""Headless benchmark runs: ``python -m train bench {geneval,t2i-compbench,i2p,imagenet-gen,summary,table}``.

Every run shards prompts over torchrun ranks (prompt i -> rank i % world), resumes (finished
prompts are skipped; other settings are refused), writes per-image JSONL records (reward losses
before/after ReNO, iterations, time split into UNet / reward / decode / other) and ends with a
summary table. Defaults follow each benchmark's protocol; ``table`` turns the official
evaluators' output files into the paper's table rows.

    python -m train bench geneval --pipeline sdxl-turbo/ --latent-clip latent-vit-b-8.safetensors \\
        --outdir runs/geneval/latent-b8 --iterations 50
    torchrun --nproc_per_node 8 -m train.benchmarks t2i-compbench --pipeline sd-turbo/ ...
    python -m train bench table runs/geneval/latent-b8 runs/t2i/latent-b8
"""
from __future__ import annotations

from typing import Sequence

from latent_clip.cli import dispatch

USAGE = """usage: python -m train bench {geneval,t2i-compbench,i2p,imagenet-gen,summary,table} [--help]

  geneval         553 GenEval prompts x 4 -> <outdir>/<00000>/{metadata.jsonl,samples/0000.png}
  t2i-compbench   T2I-CompBench val splits x 10 -> <outdir>/<category>/samples/<prompt>_<NNNNNN>.png
  i2p             I2P prompts x 10 with / without Latent-CLIP safety, I2P's official scores
  imagenet-gen    generated ImageNet (noise 66 %, re-denoise) + zero-shot on real and generated
  summary DIR     print the summary table of a (finished or partial) run folder (I2P: rewrite its result CSVs)
  table DIR...    the paper's table rows from the official evaluators' output files, with s/image
"""


def summary(argv: Sequence[str]) -> dict:
    import json
    from pathlib import Path

    from .runner import format_summary, read_records, summarise_records

    if not argv:
        raise SystemExit("usage: python -m train bench summary <outdir>")
    out = Path(argv[0])
    records, extra = read_records(out), None
    if any("variant" in r for r in records):
        from .i2p import per_category as extra, write_results
        from .outputs import OutputTree
        for path in write_results(OutputTree(out, "summary"), records):
            print(f"wrote {path}")
    result = summarise_records(records, extra)
    result.update(benchmark=out.name, items_done=len({r["item"] for r in records}))
    print(format_summary(result))
    return json.loads(json.dumps(result))


def main(argv: Sequence[str] | None = None):
    commands = {"geneval": ".geneval", "t2i-compbench": ".t2i_compbench", "t2i_compbench": ".t2i_compbench",
                "i2p": ".i2p", "imagenet-gen": ".imagenet_gen", "imagenet_gen": ".imagenet_gen", "summary": summary,
                "table": ".table"}
    return dispatch(argv, USAGE, commands, __name__)
