"""``python -m train {encode,fit,eval} ...`` (also under torchrun / accelerate launch)."""
from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: python -m train {encode,fit,eval zeroshot} [--help]

  encode          image-caption shards / folders -> raw VAE latent shards (wds or safetensors)
  fit             contrastive training (1 process, or torchrun / accelerate launch for DDP)
  eval zeroshot   top-1/top-5 zero-shot accuracy, Latent-CLIP and a pixel CLIP side by side
"""


def main(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command, rest = argv[0], argv[1:]
    if command == "encode":
        from .encode import main as run
    elif command == "fit":
        from .main import main as run
    elif command == "eval":
        from .evaluate import main as run
    else:
        raise SystemExit(f"unknown command {command!r}\n{USAGE}")
    return run(rest)


if __name__ == "__main__":
    main()
