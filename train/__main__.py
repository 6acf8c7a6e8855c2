"""``python -m train {encode,fit,eval,bench,tinyworld} ...`` (also under torchrun / accelerate launch)."""
from __future__ import annotations

import sys
from typing import Sequence

from latent_clip import cli

USAGE = """usage: python -m train {encode,fit,eval zeroshot,bench,tinyworld} [--help]

  encode          image-caption shards / folders -> raw VAE latent shards (wds or safetensors)
  fit             contrastive training (1 process, or torchrun / accelerate launch for DDP)
  eval zeroshot   top-1/top-5 zero-shot accuracy, Latent-CLIP and a pixel CLIP side by side
  bench           GenEval / T2I-CompBench / I2P / generated-ImageNet runs with ReNO and guidance
  tinyworld       the paper's three claims reproduced in a procedural world on one CPU (--demo: embedded weights)

An error is one line on stderr (exit status 2); add --debug for the traceback.
"""
COMMANDS = {"encode": ".encode", "fit": ".main", "eval": ".evaluate", "bench": ".benchmarks",
            "tinyworld": ".tinyworld.study"}


def main(argv: Sequence[str] | None = None):
    return cli.dispatch(argv, USAGE, COMMANDS, __package__)


if __name__ == "__main__":
    sys.exit(cli.run(main))
