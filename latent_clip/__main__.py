"""``python -m latent_clip``: inspect and convert Latent-CLIP weights.

  python -m latent_clip list
  python -m latent_clip info epoch_34.pt
  python -m latent_clip convert epoch_34.pt latent-clip-b8.safetensors --dtype fp16 [--no-vae-encoder]

An error is one line on stderr (exit status 2); add --debug for the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import cli
from .config import list_models
from .factory import DTYPES, convert, load_model
from .pretrained import REGISTRY, file_sha256, resolve_weights


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status (errors as one line, see :mod:`latent_clip.cli`)."""
    return cli.run(_command, argv)


def _command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m latent_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="bundled architectures and known weights")
    info = sub.add_parser("info", help="load weights and print their architecture and SHA-256")
    info.add_argument("path", help="a weights file, or a registry name (see list) downloaded to the Hugging Face cache")
    conv = sub.add_parser("convert", help="write a safetensors export (+ JSON config beside it)")
    conv.add_argument("src", help="official .pt checkpoint, state dict or safetensors export")
    conv.add_argument("dst", help="output .safetensors path")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: keep)")
    conv.add_argument("--no-vae-encoder", action="store_true",
                      help="leave out the bundled VAE encoder (latent path only; smaller file)")
    conv.add_argument("--config", default=None, help="architecture name or JSON (default: infer)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("architectures:", *list_models(), sep="\n  ")
        print("known weights (download them yourself; nothing is fetched):")
        for w in REGISTRY:
            print(f"  {w.name}: {w.url} [{w.config}, {w.latent_family} latents]")
    elif args.command == "info":
        path, official = resolve_weights(args.path)
        model = load_model(path, config=official.config if official else None)
        n = sum(p.numel() for p in model.parameters())
        print(json.dumps(model.config.to_dict(), indent=2))
        print(f"parameters: {n:,}  vae_encoder: {model.has_vae_encoder}")
        print(f"sha256: {file_sha256(path)}")
        print(f"recognised: {official.name} ({official.url})" if official else
              "recognised: no (the registry records no hash for this file; compare the sha256 above with the one "
              "on the file's Hugging Face page)")
    else:
        out = convert(args.src, args.dst, config=args.config, dtype=args.dtype, vae_encoder=not args.no_vae_encoder)
        print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    sys.exit(main())
