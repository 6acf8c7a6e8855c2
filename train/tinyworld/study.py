"""The tiny-world study: every model trained by our own commands, the paper's three claims
measured, printed as three tables that explain themselves (:mod:`.report`) and written as ``results.json``.

    python -m train tinyworld [--quick] [--out runs/tinyworld]   # train everything, measure
    python -m train tinyworld --demo                              # embedded weights, measure only
    python -m train tinyworld --export latent_clip/assets/tinyworld   # also write the weights there
    python -m train tinyworld --verifiers [--quick]   # verifiers during sampling (:mod:`.verifiers`), no training

Steps: 1. world shards  2. VAE  3. encode (``python -m train encode``)  4. fit Latent-CLIP and
pixel CLIP (``python -m train fit``)  5. zero-shot  6. generator  7. ReNO (latent vs pixel reward)
8. guidance away from a forbidden colour  9. plots, examples, tables explained (:mod:`.report`)
10. (full preset) verifiers during sampling on the trained models, in ``out/verifiers``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from latent_clip import load_model, save_export
from latent_clip.config import DEMO_DIR, DEMO_WEIGHTS
from latent_clip.pixel_clip import load_pixel_clip
from latent_clip.reno import optimize_noise
from latent_clip.rewards import latent_alignment
from latent_clip.weights import load_weights, read_export_config

from .. import encode_command
from . import clips, examples, steer, verifiers
from . import vae as tiny_vae
from .generator import TinyFlowModel, train_generator
from .report import published, report, verifiers_report
from .world import CATEGORIES, PREFIXES, make_sample

ASSETS = DEMO_DIR
FORBIDDEN = "red"
SEEDS = {"train": 0, "zeroshot": 1, "reno": 2, "guidance": 3, "noise": 4}


def run_seeds(seed: int) -> dict[str, int]:
    """World, held-out, prompt and noise seeds of a study run (``--seed``; 0 gives the published table)."""
    return {stage: base + 10 * seed for stage, base in SEEDS.items()}


@dataclass
class Preset:
    vae_steps: int            # 0: use the embedded VAE
    train_samples: int
    clip_steps: int
    clip_batch: int
    generator_steps: int
    zeroshot_per_category: int
    reno_prompts: int
    reno_iterations: int
    guidance_prompts: int
    guidance_iterations: int
    clip_lr: float = 5e-3
    clip_heads: int = 1           # attention heads of both CLIPs' layers (clips.clip_configs)
    reno_lr: float = 0.5
    guidance_lr: float = 1.0
    euler_steps: int = 4
    hard_negatives: int = 0       # 1: CLIP batches of twins whose captions differ in one attribute (clips.py)
    verify_prompts: int = 240     # --verifiers: prompts of the frontier (and of the safety stop)
    verify_candidates: int = 8
    verify_steps: int = 8


PRESETS = {
    "quick": Preset(vae_steps=0, train_samples=4000, clip_steps=300, clip_batch=128, generator_steps=500,
                    zeroshot_per_category=200, reno_prompts=24, reno_iterations=12, guidance_prompts=24,
                    guidance_iterations=8, verify_prompts=48),
    # full: CLIPs that see shape and binding well enough for selection to move the judge (docs/verifiers.md):
    # 4 heads, lr 1e-3 (5e-3 left shape at chance after 3000 steps), batches of twins, 3000 steps
    "full": Preset(vae_steps=1500, train_samples=38400, clip_steps=3000, clip_batch=128, generator_steps=1500,
                   zeroshot_per_category=100, reno_prompts=240, reno_iterations=25, guidance_prompts=48,
                   guidance_iterations=15, clip_lr=1e-3, clip_heads=4, hard_negatives=1),
    "demo": Preset(vae_steps=0, train_samples=0, clip_steps=0, clip_batch=0, generator_steps=0,
                   zeroshot_per_category=40, reno_prompts=24, reno_iterations=12, guidance_prompts=24,
                   guidance_iterations=8),
}


class Clock:
    def __init__(self):
        self.start, self.stages = time.time(), {}

    def lap(self, name: str, since: float) -> float:
        """Record stage ``name`` as running from ``since`` until now; returns now (the next stage's start)."""
        now = time.time()
        self.stages[name] = round(now - since, 1)
        print(f"[tinyworld] {name}: {self.stages[name]:.1f} s (total {now - self.start:.0f} s)", flush=True)
        return now


# ---------------------------------------------------------------- training (steps 1-4, 6)

def train_all(p: Preset, out: Path, clock: Clock, weights: Path = ASSETS, seed: int = 0) -> dict:
    """Steps 1-4 and 6; with ``p.vae_steps == 0`` the VAE comes from ``weights``. ``seed`` picks the
    training world and every optimiser's initialisation and batches."""
    seeds = run_seeds(seed)
    t = time.time()
    if p.hard_negatives and p.train_samples % p.clip_batch:
        raise ValueError(f"hard negatives need whole batches of twins: train_samples {p.train_samples} is not a "
                         f"multiple of clip_batch {p.clip_batch}")
    clips.write_image_shards(out / "data" / "images", seeds["train"], p.train_samples,
                             p.clip_batch if p.hard_negatives else 2000, pairs=bool(p.hard_negatives))
    t = clock.lap("world shards", t)
    vae = tiny_vae.train_vae(p.vae_steps, seed=seeds["train"]) if p.vae_steps else tiny_vae.load(weights / "vae")
    tiny_vae.save(vae, out / "models" / "vae")
    t = clock.lap("vae", t)
    encode_command(["--input", str(out / "data" / "images"), "--vae", str(out / "models" / "vae"),
                    "--out", str(out / "data" / "latents"), "--format", "safetensors", "--size", "64",
                    "--store-dtype", "fp32", "--batch-size", "100", "--device", "cpu"])
    t = clock.lap("encode", t)
    models = {"vae": vae}
    latent_cfg, pixel_cfg = clips.clip_configs(p.clip_heads)
    for kind, cfg, data in (("latent", latent_cfg, "latents"), ("pixel", pixel_cfg, "images")):
        ckpt = clips.fit(kind, cfg, out / "data" / data, out / "fit", p.clip_steps, p.clip_batch, p.clip_lr,
                         seed=seed)
        models[kind] = clips.load_latent_checkpoint(ckpt, cfg) if kind == "latent" else load_pixel_clip(cfg, ckpt)
        t = clock.lap(f"fit {kind} clip", t)
    raw, captions = clips.read_latent_shards(out / "data" / "latents")
    models["generator"] = train_generator(raw * tiny_vae.SCALING_FACTOR, captions, p.generator_steps, seed=seed)
    clock.lap("generator", t)
    save_models(models, out / "models")
    return models


def save_models(models: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "vae").exists():
        tiny_vae.save(models["vae"], directory / "vae")
    save_export(models["latent"], directory / DEMO_WEIGHTS.name, dtype="fp16")
    save_fp16(models["pixel"], directory / "pixel_clip.safetensors", {"model_cfg": models["pixel"].model_cfg})
    save_fp16(models["generator"], directory / "generator.safetensors", models["generator"].config)


def save_fp16(module: torch.nn.Module, path: Path, sidecar: dict) -> None:
    """``module``'s weights as fp16 safetensors at ``path``, and ``sidecar`` as the JSON beside it."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")


def load_models(directory: Path) -> dict:
    generator = TinyFlowModel(**json.loads((directory / "generator.json").read_text()))
    pixel = directory / "pixel_clip.safetensors"
    return {"vae": tiny_vae.load(directory / "vae"), "latent": load_model(directory / DEMO_WEIGHTS.name),
            "pixel": load_pixel_clip(read_export_config(pixel.with_suffix(".json")), pixel),
            "generator": load_weights(generator, directory / "generator.safetensors").eval().requires_grad_(False)}


# ---------------------------------------------------------------- measuring (steps 5, 7, 8)

def prompts_for(seed: int, n: int, categories: Sequence[str]) -> list:
    return [make_sample(seed, i, categories[i % len(categories)], prefix=False) for i in range(n)]


def measure(models: dict, p: Preset, out: Path, clock: Clock, seed: int = 0) -> dict:
    """Claims 1-3 on the trained (or embedded) models: zero-shot, ReNO, guidance; then the pictures."""
    seeds = run_seeds(seed)
    t = time.time()
    results = zero_shot_results(models, p, seeds)
    t = clock.lap("zero-shot", t)
    results["reno"], results["reno_curves"], images, captions = reno_results(models, p, seeds)
    t = clock.lap("reno", t)
    results["guidance"], img0, img1 = guidance_results(models, p, seeds)
    t = clock.lap("guidance", t)
    plots(out, results["reno_curves"], images, captions, img0, img1)
    clock.lap("plots", t)
    return results


def zero_shot_results(models: dict, p: Preset, seeds: dict[str, int]) -> dict:
    """Claim 1: zero-shot of both CLIPs on held-out samples, and the judge's ceiling."""
    vae = models["vae"]
    data = clips.held_out(vae, seeds["zeroshot"], p.zeroshot_per_category)
    results = {"zeroshot": {"latent": clips.zero_shot("latent", models["latent"], data),
                            "pixel": clips.zero_shot("pixel", models["pixel"], data), "chance": clips.CHANCE,
                            "n_per_category": p.zeroshot_per_category}}
    # the judge on VAE reconstructions of ground truth: the ceiling for anything generated
    ok = np.concatenate([steer.judge_latents(vae, d.latents, [s.spec for s in d.samples])[0] for d in data.values()])
    results["judge_ceiling"] = {"ground_truth": 1.0, "vae_reconstruction": float(ok.mean())}
    return results


def reno_results(models: dict, p: Preset, seeds: dict[str, int]) -> tuple[dict, dict, dict, list[str]]:
    """Claim 2: ReNO, base vs Latent-CLIP reward vs pixel-CLIP reward (decode + pixel CLIP) ->
    (results, mean loss curves, images by run, captions)."""
    vae, latent, pixel = models["vae"], models["latent"], models["pixel"]
    samples = prompts_for(seeds["reno"], p.reno_prompts, CATEGORIES)
    specs = [s.spec for s in samples]
    gen = steer.PromptedFlow(models["generator"], [PREFIXES[1] + s.spec.phrase() for s in samples], p.euler_steps)
    base_ok, base_images = steer.judge_latents(vae, gen(gen.noise(seeds["noise"])), specs)
    runs = {"latent": latent_alignment(latent, gen.prompts), "pixel": steer.pixel_reward(pixel, vae, gen.prompts)}
    reno = {"base": {"judge": float(base_ok.mean()), "per_category": per_category(base_ok, specs)}}
    images = {"base": base_images}
    histories = {}
    for name, reward in runs.items():
        r = optimize_noise(gen, reward, gen.noise(seeds["noise"]), iterations=p.reno_iterations, lr=p.reno_lr)
        ok, images[name] = steer.judge_latents(vae, r.best_latent, specs)
        n = len(specs)
        reno[name] = {"judge": float(ok.mean()), "gain": verifiers.estimate(ok.astype(float) - base_ok),
                      "per_category": per_category(ok, specs),
                      "seconds_per_image": r.seconds / n,
                      "seconds_per_iteration_per_image": float(np.median(r.iteration_seconds)) / n,
                      "reward_start": float(r.history[0].mean()), "reward_best": float(r.best_loss.mean())}
        histories[name] = r.history.mean(1).tolist()
    reno["iterations"], reno["prompts"], reno["lr"] = p.reno_iterations, p.reno_prompts, p.reno_lr
    return reno, histories, images, [s.spec.phrase() for s in samples]


def guidance_results(models: dict, p: Preset, seeds: dict[str, int]) -> tuple[dict, list, list]:
    """Claim 3: guidance away from a forbidden colour, on prompts that leave colour open ->
    (results, unguided images, guided images)."""
    vae = models["vae"]
    open_colour = [c for c in CATEGORIES if c not in ("colors", "color_attr")]
    samples = [s for s in prompts_for(seeds["guidance"], 3 * p.guidance_prompts, open_colour)
               if all(q.colour is None for q in s.spec.queries)][:p.guidance_prompts]
    specs = [s.spec for s in samples]
    gen = steer.PromptedFlow(models["generator"], [PREFIXES[1] + s.spec.phrase() for s in samples], p.euler_steps)
    ok0, img0 = steer.judge_latents(vae, gen(gen.noise(seeds["noise"])), specs)
    r = steer.guided(gen, models["latent"], FORBIDDEN, seeds["noise"], p.guidance_iterations, p.guidance_lr)
    ok1, img1 = steer.judge_latents(vae, r.best_latent, specs)
    return {"concept": FORBIDDEN, "prompts": len(specs), "iterations": p.guidance_iterations,
            "forbidden_rate_base": steer.forbidden_rate(img0, FORBIDDEN),
            "forbidden_rate_guided": steer.forbidden_rate(img1, FORBIDDEN),
            "judge_base": float(ok0.mean()), "judge_guided": float(ok1.mean()),
            "seconds_per_image": r.seconds / len(specs)}, img0, img1


def per_category(ok: np.ndarray, specs: list) -> dict[str, float]:
    return {c: float(np.mean([o for o, s in zip(ok, specs) if s.category == c]))
            for c in CATEGORIES if any(s.category == c for s in specs)}


def plots(out: Path, histories: dict, images: dict, captions: list[str], img0, img1) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, h in histories.items():
        h = np.array(h)
        ax.plot(h - h[0], label=f"ReNO, {name}-CLIP reward")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward loss change (mean)")
    ax.legend()
    save_figure(fig, out / "reward_curves.png")
    k = min(6, len(captions))
    save_figure(image_rows(images, k, captions), out / "examples_reno.png")
    guidance = {"unguided": img0, f"avoid {FORBIDDEN}": img1}
    save_figure(image_rows(guidance, min(k, len(img0))), out / "examples_guidance.png")


def image_rows(rows: dict[str, list], k: int, captions: list[str] | None = None):
    """A figure with one row of ``k`` images per name; the first row titled with ``captions``."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), k, figsize=(2 * k, 2.2 * len(rows)), squeeze=False)
    for i, (name, images) in enumerate(rows.items()):
        for j in range(k):
            axes[i, j].imshow(images[j])
            axes[i, j].axis("off")
            axes[i, j].set_title(f"{name}: {captions[j]}" if captions and i == 0 else name, fontsize=6)
    return fig


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verifier_study(models: dict, p: Preset, name: str, out: Path, clock: Clock, args: argparse.Namespace) -> dict:
    """``--verifiers``: the pruning frontier and the early safety stop on ``models``; prints the tables and writes
    ``results.json``, ``table.md`` and ``frontier.png`` to ``out``."""
    if args.demo:
        raise ValueError("--verifiers measures the weights in --weights already; drop --demo (or add --quick)")
    setup = verifiers.Setup(p.verify_prompts, p.verify_candidates, p.verify_steps,
                            tuple(sorted({1, p.verify_candidates // 4, p.verify_candidates // 2})))
    t = time.time()
    results = {"verifiers": verifiers.measure(models, setup, args.seed, FORBIDDEN)}
    clock.lap("verifiers", t)
    results.update(preset=name, config=asdict(p), stage_seconds=clock.stages, cpu_seconds=round(time.process_time(), 1),
                   total_seconds=round(time.time() - clock.start, 1), threads=args.threads, seed=args.seed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = verifiers_report(results["verifiers"])
    (out / "table.md").write_text(text + "\n")
    frontier_plot(results["verifiers"], out / "frontier.png")
    print(text)
    print(f"[tinyworld] verifiers ({name}): {results['total_seconds']:.0f} s; results in {out}")
    return results


def frontier_plot(v: dict, path: Path) -> None:
    """Judge score against model evaluations: no selection, best-of-N, and pruning to each m over the steps k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    f = v["frontier"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))

    def point(x, est, **style):
        ax.errorbar(x, est["value"], yerr=[[est["value"] - est["ci"][0]], [est["ci"][1] - est["value"]]],
                    capsize=3, **style)
    for keep in sorted({r["keep"] for r in f["pruned"]}):
        rows = sorted((r for r in f["pruned"] if r["keep"] == keep), key=lambda r: r["evaluations"])
        ax.plot([r["evaluations"] for r in rows], [r["judge"]["value"] for r in rows], "o-", ms=3,
                label=f"pruned to {keep} at step k = 1..{v['steps'] - 1}")
    point(f["none"]["evaluations"] - 0.5, f["none"]["judge"], fmt="s", color="grey", label="no selection")
    point(f["full"]["evaluations"] + 0.5, f["full"]["judge"], fmt="D", color="black",
          label=f"best-of-{v['candidates']}")
    ax.set_xlabel(f"model evaluations per prompt ({v['candidates']} candidates, {v['steps']} steps)")
    ax.set_ylabel("judge score")
    ax.set_title(f"{v['prompts']} prompts; bars: 95 % bootstrap intervals", fontsize=8)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ---------------------------------------------------------------- entry

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train tinyworld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI preset (~5 min): reuses the embedded VAE")
    mode.add_argument("--demo", action="store_true", help="no training: measure the embedded weights")
    mode.add_argument("--write-examples", action="store_true",
                      help="write the pack's example latents (latent_clip/examples.py) with --weights' VAE, and stop")
    p.add_argument("--verifiers", action="store_true",
                   help="measure only the verifiers during sampling on --weights (pruning frontier, safety stop); "
                        "sizes from the full preset, or quick's with --quick")
    p.add_argument("--out", help="output folder (default runs/tinyworld; with --verifiers runs/tinyworld/verifiers, "
                                 "so a study's results.json is not overwritten)")
    p.add_argument("--weights", default=str(ASSETS), help="embedded weights folder (--demo, quick's VAE)")
    p.add_argument("--export", help="also copy the trained weights to this folder")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set clip_steps=100 (fields: see PRESETS)")
    p.add_argument("--seed", type=int, default=0, help="shifts every world, prompt, noise and training seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest on a shared CPU (OpenMP spin-waits when oversubscribed)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.write_examples:
        return examples.write_examples(Path(args.weights))
    torch.manual_seed(args.seed)
    name = "demo" if args.demo else "quick" if args.quick else "full"
    preset = PRESETS[name]
    out = Path(args.out or ("runs/tinyworld/verifiers" if args.verifiers else "runs/tinyworld"))
    for item in args.set:
        key, value = item.split("=", 1)
        preset = replace(preset, **{key: type(getattr(preset, key))(value)})
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    weights = Path(args.weights)
    if args.verifiers:
        return verifier_study(load_models(weights), preset, name, out, clock, args)
    models = load_models(weights) if args.demo else train_all(preset, out, clock, weights, args.seed)
    results = measure(models, preset, out, clock, args.seed)
    results.update(preset=name, config=asdict(preset), stage_seconds=clock.stages,
                   total_seconds=round(time.time() - clock.start, 1), threads=args.threads, seed=args.seed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results, published(weights))
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"[tinyworld] {name}: {results['total_seconds']:.0f} s after Python's imports; results in {out}")
    if name == "full":  # the trained models' verifiers during sampling too; quick's run on the embedded ones in CI
        (out / "verifiers").mkdir(exist_ok=True)
        verifier_study(models, preset, name, out / "verifiers", clock, args)
    if args.export and not args.demo:
        shutil.copytree(out / "models", args.export, dirs_exist_ok=True)
        shutil.copy2(out / "results.json", Path(args.export) / "results.json")
    return results
