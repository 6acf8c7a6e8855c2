"""What does pruning at step k save a ComfyUI user: model evaluations and time of the Prune Sampler against plain
sampling of all N candidates, as ratios from the same run.

Question: with ComfyUI's own checkpoint loader and sampling stack (``CFGGuider.sample``, as
``SamplerCustomAdvanced`` runs it, under ``torch.inference_mode`` like the executor), N candidates sampled for S
euler steps: how many UNet evaluations and how much time does ``PruneSampler`` (keep m at step k, finish only those)
spend against a plain euler run of all N?

* evaluations: UNet rows counted by a UNet function wrapper (``set_model_unet_function_wrapper``) on both paths
  (cfg 1, so one row per candidate per step), beside the sampler's own count and the rule N*k + m*(S-k);
* time: this process's CPU seconds (``bench/timing.py``: interleaved repeats, ratio = median of the per-repeat
  ratios with their range), one thread; ``--load-check`` times it alone, then beside a CPU burner;
* exactness: the largest |difference| between the survivors' final latents and the plain run's same rows.

The model is the tests' random full-size SD1.5 checkpoint (tests/fixtures.sd15_checkpoint builds it in
build/test_models/), random conditioning, an empty latent of ``--size`` px; the verifier a random
Latent-ViT-B-8-512 of the SD1.5 latent family (the official architecture's cost, not its judgement).

    .venv/bin/python -m bench.bench_verify_comfy --candidates 8 --steps 20 --keep 2 --at-step 5 10 --repeats 3
        [--size 64] [--comfyui build/ComfyUI] [--json out.json] [--beside-burner | --load-check]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import torch

from bench.inprocess import import_comfyui
from bench.timing import Ratio, add_timing_options, interleaved, ratio, run_measurement

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "build" / "test_models" / "latent_clip_test_sd15.safetensors"


def setup(comfy_dir: Path, checkpoint: Path, threads: int):
    """(pack modules, model patcher with a row-counting UNet wrapper, its count, positive conds, Latent-CLIP)."""
    torch.set_num_threads(threads)
    pack = import_comfyui(comfy_dir).pack
    verify, loaders, latent_clip = (importlib.import_module(f"{pack.__name__}.{name}")
                                    for name in ("nodes.verify", "nodes.loaders", "latent_clip"))
    import comfy.model_patcher
    import comfy.sd
    with torch.inference_mode():  # as CheckpointLoaderSimple and the loader node run
        model = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False)[0]
        config = latent_clip.get_model_config("Latent-ViT-B-8-512").to_dict()
        config["vision_cfg"]["latent_family"] = "sd15"
        torch.manual_seed(0)
        clip = latent_clip.LatentCLIP(latent_clip.ModelConfig.from_dict(config)).eval()
    lclip = comfy.model_patcher.ModelPatcher(loaders.ModelHolder(clip), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    rows = [0]

    def counting(apply_model, args):
        rows[0] += len(args["input"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = model.clone()
    model.set_model_unet_function_wrapper(counting)
    positive = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    return verify, model, rows, positive, lclip


def sample(model, positive, sampler, candidates: int, side: int, steps: int) -> torch.Tensor:
    import comfy.samplers
    noise = torch.randn(candidates, 4, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.inner_set_conds({"positive": positive})
        guider.set_cfg(1.0)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
        return guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=0, disable_pbar=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=8, help="N, the batch")
    ap.add_argument("--steps", type=int, default=20, help="S euler steps")
    ap.add_argument("--keep", type=int, default=2, help="m, the candidates finished")
    ap.add_argument("--at-step", type=int, nargs="+", default=[5, 10], help="checkpoint steps k")
    ap.add_argument("--size", type=int, default=64, help="image size in px (latent = size / 8)")
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT,
                    help="an SD1.5 checkpoint (default: the tests' random one)")
    ap.add_argument("--comfyui", type=Path, default=Path(os.environ.get("LATENT_CLIP_COMFYUI_DIR") or
                                                         ROOT / "build" / "ComfyUI"), help="ComfyUI folder")
    ap.add_argument("--json", help="write the raw numbers here (one entry per timed run)")
    add_timing_options(ap)
    args = ap.parse_args(argv)
    if not (args.comfyui / "main.py").is_file():
        sys.exit(f"bench_verify_comfy: no ComfyUI at {args.comfyui} (bash scripts/install_comfyui.sh, or --comfyui)")
    if not args.checkpoint.is_file():
        sys.exit(f"bench_verify_comfy: no checkpoint at {args.checkpoint}: run the ComfyUI tests once (they build "
                 f"the random SD1.5 one there) or pass --checkpoint")
    verify, model, rows, positive, lclip = setup(args.comfyui, args.checkpoint, args.threads)
    import comfy.samplers
    n, s, m, side = args.candidates, args.steps, args.keep, args.size // 8
    print(f"torch {torch.__version__}, ComfyUI at {args.comfyui} (--cpu), {args.checkpoint.name}, {args.size} px, "
          f"N={n}, S={s} euler steps, keep m={m} at k={args.at_step}, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats", flush=True)
    samplers = {f"prune k={k}": verify.PruneSampler(comfy.samplers.ksampler("euler"), lclip, "a photo of a cat", m,
                                                    k, 1.0) for k in args.at_step}
    counts, outputs = {}, {}

    def path(name: str, sampler):
        def call():
            rows[0] = 0
            outputs[name] = sample(model, positive, sampler, n, side, s)
            counts[name] = rows[0]
        return call

    paths = {"plain": path("plain", comfy.samplers.ksampler("euler")),
             **{name: path(name, sampler) for name, sampler in samplers.items()}}
    sample(model, positive, comfy.samplers.ksampler("euler"), n, side, 2)  # warm-up: first-call costs
    runs = []

    def measure() -> dict[str, Ratio]:
        seconds = interleaved(paths, repeats=args.repeats, warmup=0)
        results = {"plain": {"evaluations": counts["plain"], "rule": n * s, "cpu_s": seconds["plain"]}}
        print(f"plain: {counts['plain']} UNet evaluations (N*S = {n * s}), CPU s per run {_fmt(seconds['plain'])}")
        for name, sampler in samplers.items():
            results[name] = r = pruned_result(sampler, counts, seconds, outputs, name)
            print(f"{name}: {r['evaluations']} UNet evaluations (sampler counted {r['sampler_counted']}, rule "
                  f"N*k + m*(S-k) = {r['rule']}), CPU s per run {_fmt(seconds[name])}; pruned / plain: evaluations "
                  f"{r['evaluation_ratio']:.3f}, time {_ratio(ratio(seconds[name], seconds['plain']))}; kept "
                  f"{r['kept']}, survivors vs plain max |diff| {r['max_abs_diff_to_plain']:.2e}", flush=True)
        runs.append(results)
        return {f"{name} / plain": ratio(seconds[name], seconds["plain"]) for name in samplers}

    run_measurement(measure, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {**vars(args), "comfyui": str(args.comfyui), "checkpoint": str(args.checkpoint)},
                       "torch": torch.__version__, "runs": runs}, f, indent=2)
    return runs[0]


def pruned_result(sampler, counts: dict, seconds: dict, outputs: dict, name: str) -> dict:
    """One pruned path's figures beside the plain run's (same interleaved run)."""
    kept = sampler.last_result.kept
    return {"evaluations": counts[name], "sampler_counted": sampler.counted, "rule": sampler.last_result.evaluations,
            "cpu_s": seconds[name], "evaluation_ratio": counts[name] / counts["plain"],
            "time_ratio": vars(ratio(seconds[name], seconds["plain"])), "kept": kept.tolist(),
            "max_abs_diff_to_plain": float((outputs[name] - outputs["plain"][kept]).abs().max())}


def _ratio(r: Ratio) -> str:
    return f"{r.median:.3f} ({r.low:.3f}-{r.high:.3f}, {r.repeats} repeats)"


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


if __name__ == "__main__":
    main()
