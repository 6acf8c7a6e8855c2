"""``python -m train {encode,fit,eval,bench,tinyworld} ...`` (also under torchrun / accelerate launch)."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

USAGE = """usage: python -m train {encode,fit,eval zeroshot,bench,tinyworld} [--help]

  encode          image-caption shards / folders -> raw VAE latent shards (wds or safetensors)
  fit             contrastive training (1 process, or torchrun / accelerate launch for DDP)
  eval zeroshot   top-1/top-5 zero-shot accuracy, Latent-CLIP and a pixel CLIP side by side
  bench           GenEval / T2I-CompBench / I2P / generated-ImageNet runs with ReNO and guidance
  tinyworld       the paper's three claims reproduced in a procedural world on one CPU (--demo: embedded weights)
"""
COMMANDS = {"encode": ".encode", "fit": ".main", "eval": ".evaluate", "bench": ".benchmarks",
            "tinyworld": ".tinyworld"}


def main(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"unknown command {command!r}\n{USAGE}")
    return importlib.import_module(COMMANDS[command], __package__).main(rest)


if __name__ == "__main__":
    main()
