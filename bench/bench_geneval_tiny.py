"""Where does a GenEval second go? ``geneval`` on the first N prompts with tiny random pipelines.

Question (issue 7's device check): with ReNO on a Latent-CLIP reward, how is the time per image split
between the denoiser (UNet / transformer, forward and backward), the reward, the VAE decode and the
rest, for a UNet pipeline (SD-Turbo-shaped) and a flow transformer (FLUX-schnell-shaped)? The pipelines
and the Latent-CLIP are the tests' tiny random builders (``tests/tiny_pipelines.py``), saved in the
real diffusers layouts (no downloads), so the numbers show the loop's overheads, not a real model's cost.

    .venv/bin/python -m bench.bench_geneval_tiny --device cuda --prompts 8   # on a GPU
    .venv/bin/python -m bench.bench_geneval_tiny --device cpu --prompts 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the test builders live with the tests, not in train/


def build(root: Path) -> dict[str, tuple[Path, Path]]:
    """{family: (pipeline folder, Latent-CLIP weights of that latent family)}."""
    sys.path.insert(0, str(TESTS))
    from tiny_pipelines import build_flux, build_latent_clip, build_sd

    flux_clip = build_latent_clip(root / "latent_clip_flux.safetensors", family="flux", channels=16)
    return {"sd-turbo-shaped UNet": (build_sd(root / "sd"), build_latent_clip(root / "latent_clip.safetensors")),
            "flux-schnell-shaped transformer": (build_flux(root / "flux"), flux_clip)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args(argv)
    from train.benchmarks import geneval
    from train.distributed import DistEnv

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, (pipeline, weights) in build(Path(tmp)).items():
            summary = geneval.main(["--pipeline", str(pipeline), "--latent-clip", str(weights), "--latent-weight", "1",
                                    "--resolution", str(args.resolution), "--device", args.device,
                                    "--limit", str(args.prompts), "--iterations", str(args.iterations),
                                    "--summary-wait", "60", "--outdir", str(Path(tmp) / "runs" / family.split()[0]),
                                    *(["--max-sequence-length", "32"] if "flux" in family else [])])
            out[family] = {"device": str(DistEnv.from_env(args.device).device),
                           "time_per_image": summary["time_per_image"], "images": summary["images"],
                           "peak_memory_gb": summary.get("peak_memory_gb")}
    for family, r in out.items():
        t = r["time_per_image"]
        total = t.get("total") or sum(v for k, v in t.items() if k != "total" and v)
        split = ", ".join(f"{k} {v:.3f} s ({v / total:.0%})" for k, v in t.items() if k != "total" and v is not None)
        print(f"{family} on {r['device']}: {total:.3f} s/image ({args.iterations} ReNO iterations): {split}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
