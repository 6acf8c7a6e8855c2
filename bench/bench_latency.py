"""The latency a user feels first: imports, loading a model, the first and the warm Score call, and the prompt
cache. Each figure comes from fresh child processes (one thread), as CPU seconds (``time.process_time``) and
peak resident memory (``VmHWM``).

Imports (median of ``--runs`` children each): ``import torch`` as the reference, ``import latent_clip``, and the
pack as ComfyUI loads it (bench/inprocess.py: ComfyUI first, then the pack and its node list; the pack's CPU is
the difference).

Models (one child per model and dtype): random weights of each architecture at true size, written once as a
real fp32 safetensors export, loaded with ``load_model(dtype=...)``, plus the embedded tiny-world model.
``load`` is ``load_model`` alone (the libraries imported before it); ``first`` the first ``score_latents`` of a
batch-1 latent at the model's size after the load; ``warm`` the median of later calls with the same prompt
(its text embedding cached); ``uncached`` the same call with the cache emptied first (what every call cost
before the cache), interleaved with ``warm`` (bench/timing.py); ``peak`` the child's peak RSS.

    .venv/bin/python -m bench.bench_latency [--runs 3] [--models Latent-ViT-B-8-512 ...] [--dtypes fp32 bf16 fp16]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINYWORLD = "tinyworld"
MODELS = ("Latent-ViT-B-8-512", "Latent-ViT-B-4-512-plus", TINYWORLD)
DTYPES = ("fp32", "bf16", "fp16")
PROMPT = "a photo of a red fox in the snow"
IMPORTS = {
    "torch": "import torch",
    "latent_clip": "import latent_clip",
    "pack": ("import asyncio\nfrom bench.inprocess import import_comfy, import_pack\nimport_comfy(COMFY)\n"
             "START()\npack = import_pack()\nasyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())"),
}


def peak_gb() -> float:
    from bench.memory import status_gb
    return status_gb("VmHWM")


def child_import(name: str, comfy_dir: str) -> dict:
    """CPU seconds of one import (for the pack: after ComfyUI's), this child's peak RSS, and the heavy modules
    that import brought in (for the pack: beyond those ComfyUI had)."""
    marks = [(time.process_time(), heavy_loaded())]
    code = IMPORTS[name].replace("COMFY", f"__import__('pathlib').Path({comfy_dir!r})")
    exec(code, {"START": lambda: marks.append((time.process_time(), heavy_loaded()))})
    start, before = marks[-1]
    return {"cpu_s": time.process_time() - start, "peak_gb": peak_gb(),
            "loaded": [m for m in heavy_loaded() if m not in before]}


def heavy_loaded() -> list[str]:
    return [m for m in ("transformers", "open_clip", "timm", "diffusers") if m in sys.modules]


def child_model(path: str, dtype: str, repeats: int) -> dict:
    """load / first / warm / uncached CPU seconds and peak RSS of one model file at one dtype."""
    import torch

    import latent_clip
    import latent_clip.model  # noqa: F401 - the libraries a load needs, outside its time
    from bench.timing import interleaved
    from latent_clip.textcache import TEXT_CACHE

    torch.set_num_threads(1)
    start = time.process_time()
    model = latent_clip.load_model(path, dtype=dtype, vae_encoder=False)
    load = time.process_time() - start
    v = model.config.vision
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, v.latent_n_channels, v.latent_size, v.latent_size, generator=g)

    def score():
        with torch.no_grad():
            latent_clip.score_latents(model, latents, PROMPT)

    def uncached():
        TEXT_CACHE.clear()
        score()

    start = time.process_time()
    score()
    first = time.process_time() - start
    samples = interleaved({"warm": score, "uncached": uncached}, repeats=repeats)
    return {"load_s": load, "first_s": first, "warm_s": statistics.median(samples["warm"]),
            "uncached_s": statistics.median(samples["uncached"]),
            "uncached_over_warm": statistics.median(u / w for u, w in zip(samples["uncached"], samples["warm"])),
            "peak_gb": peak_gb()}


def run_child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench.bench_latency", "--child", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_exports(names: list[str], folder: Path) -> dict[str, str]:
    """{name: weights file}: each architecture's random (seeded) fp32 weights as an export, the tiny world's own."""
    import torch

    from latent_clip import LatentCLIP, get_model_config, save_export
    from latent_clip.config import DEMO_WEIGHTS

    files = {}
    for name in names:
        if name == TINYWORLD:
            files[name] = str(DEMO_WEIGHTS)
            continue
        torch.manual_seed(0)
        files[name] = str(save_export(LatentCLIP(get_model_config(name)).eval(), folder / f"{name}.safetensors"))
    return files


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="children per import row (median)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved warm/uncached calls per model child")
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--comfyui", default=str(ROOT / "build" / "ComfyUI"), help="ComfyUI folder for the pack row")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "import":
            result = child_import(rest[0], args.comfyui)
        else:
            result = child_model(rest[0], rest[1], args.repeats)
        print(json.dumps(result))
        return result
    figures = {"imports": {}, "models": {}}
    print(f"imports, median of {args.runs} fresh children, CPU s / peak RSS GB (1 thread):")
    for name in IMPORTS:
        if name == "pack" and not (Path(args.comfyui) / "main.py").is_file():
            print(f"  {name:12s} skipped: no ComfyUI at {args.comfyui}")
            continue
        runs = [run_child("import", name, "--comfyui", args.comfyui) for _ in range(args.runs)]
        row = {k: statistics.median(r[k] for r in runs) for k in ("cpu_s", "peak_gb")} | {"loaded": runs[0]["loaded"]}
        figures["imports"][name] = row
        print(f"  {name:12s} {row['cpu_s']:6.2f} s  {row['peak_gb']:5.2f} GB  loads {', '.join(row['loaded']) or '-'}")
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        files = write_exports(args.models, Path(tmp))
        print("models, one fresh child each, CPU s (1 thread): load, first call, warm call, uncached call, peak RSS")
        for name, path in files.items():
            for dtype in args.dtypes:
                row = run_child("model", path, dtype, "--repeats", str(args.repeats))
                figures["models"][f"{name} {dtype}"] = row
                print(f"  {name:24s} {dtype}  load {row['load_s']:6.2f}  first {row['first_s']:6.3f}  warm "
                      f"{row['warm_s']:6.3f}  uncached {row['uncached_s']:6.3f} ({row['uncached_over_warm']:.2f}x)  "
                      f"peak {row['peak_gb']:5.2f} GB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
