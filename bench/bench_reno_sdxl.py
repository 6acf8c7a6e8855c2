"""What does one ReNO iteration cost on SDXL-Turbo at true size: Latent-CLIP reward vs decode + pixel CLIP?

Question: per stepped iteration of ``latent_clip.reno.optimize_noise`` on SDXL-Turbo's UNet at 512 px
(UNet fwd+bwd + reward fwd+bwd + regulariser + SGD step), what do the two reward paths cost in CPU
time and memory, and how close does the latent path's saving come to its ceiling?

* time: CPU seconds of an iteration of the real loop (between two progress callbacks); the ceiling
  is ``1 - (U + Lat) / (U + Pix)`` from the components timed alone in the same run (U: UNet
  fwd+bwd w.r.t. the noise, Lat: Latent-ViT-B/8 reward fwd+bwd, Pix: SDXL-VAE decode + open_clip
  ViT-L-14 reward fwd+bwd). A reference measurement (1 thread, CPU time) put it at 56.9 %.
* memory: what autograd saves for backward in one iteration (bytes of the distinct storages packed
  by a saved-tensors hook, weights excluded: the UNet's activations plus the reward's; the reference
  measurement's 8.3 -> 2.6 GiB), and peak RSS over the RSS after building the models (the OS's view).

Models are built from their configs with random weights (no downloads), fp32, eval, frozen:
diffusers ``UNet2DConditionModel`` with SDXL's config (2,567.5 M params, ``text_time`` added
conditioning), the SDXL VAE decoder (scaling from ``latent_clip/latent_families.json``), open_clip
ViT-L-14 (its text tower dropped once the prompt is encoded) and Latent-ViT-B-8-512. Each
measurement runs in its own child process, one after the other, 1 torch thread by default:

* ``latent``: the latent path's loop, then U and Lat alone (about 15 GB: the fp32 UNet is 10.3 GB);
* ``pixel-reward``: Pix alone on a fixed latent, without the UNet (about 9 GB);
* ``pixel`` (``--pixel-loop``): the pixel path's loop, then U and Pix alone (about 22 GB, more than a
  24 GB machine has to spare at 512 px). Without it, the pixel iteration and its autograd memory are
  composed from this run's measurements: the latent loop's with its reward swapped for the pixel
  one (iteration - Lat + Pix); ``--size 256 --pixel-loop`` compares the composition with the loop.

    .venv/bin/python -m bench.bench_reno_sdxl --iterations 3 --size 512 [--pixel-loop] [--json out.json]
    .venv/bin/python -m bench.bench_reno_sdxl --report-from out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bench.memory import reset_peak, status_gb

C1_CEILING = 0.569  # the reference measurement's ceiling, CPU time (the goal: within 5 points of this run's)
ANCHOR_AUTOGRAD_GIB = {"latent": 2.6, "pixel": 8.3}  # the reference measurement's fp32 tensor peaks of one iteration
SDXL_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
CHILDREN = ("latent", "pixel-reward", "pixel")
PROMPT = "a photo of an astronaut riding a horse"


def available_gb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2 ** 20


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward, per graph, without the weights'
    (``weights``: modules whose parameters and buffers, and views of them, are not counted)."""

    def __init__(self, weights: list[torch.nn.Module]):
        self.weights = {t.untyped_storage().data_ptr() for m in weights for t in [*m.parameters(), *m.buffers()]}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in self.weights:
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    def take(self) -> int:
        total, self.storages = sum(self.storages.values()), {}
        return total


def build(child: str, size: int):
    """(generate: noise -> raw latents or None, reward: raw latents -> (1,) loss, {name: module})."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bench.bench_reno import SD_VAE, frozen, turbo_one_step
    from latent_clip import LatentCLIP, get_latent_family, get_model_config
    from latent_clip.rewards import latent_alignment, pixel_alignment

    torch.manual_seed(0)
    family = get_latent_family("sdxl")  # SDXL-Turbo's VAE; its scale comes from the registry, not code
    models, generate = {}, None
    if child != "pixel-reward":
        models["unet"] = unet = frozen(UNet2DConditionModel(**SDXL_UNET))
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        generate = turbo_one_step(unet, family, encoder_hidden_states=torch.randn(1, 77, 2048),
                                  added_cond_kwargs={"text_embeds": torch.randn(1, 1280), "time_ids": time_ids})

    if child == "latent":
        lclip = frozen(LatentCLIP(get_model_config("Latent-ViT-B-8-512")))
        models["reward"] = lclip.visual
        return generate, latent_alignment(lclip, PROMPT), models
    import open_clip
    vae = frozen(AutoencoderKL(**SD_VAE, scaling_factor=family.scaling_factor))
    clip = frozen(open_clip.create_model("ViT-L-14", pretrained=None))
    reward = pixel_alignment(clip, open_clip.get_tokenizer("ViT-L-14"), PROMPT, lambda raw: vae.decode(raw).sample)
    del vae.encoder, vae.quant_conv, clip.transformer, clip.token_embedding  # not part of an iteration
    models["reward"] = torch.nn.ModuleList([vae, clip.visual])
    return generate, reward, models


def measured(fn, saved: SavedBytes) -> tuple[float, int]:
    """(CPU seconds of ``fn()``, bytes autograd saved for it)."""
    saved.take()
    t0 = time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        fn()
    return time.process_time() - t0, saved.take()


def child(name: str, size: int, iterations: int, threads: int) -> dict:
    from latent_clip.reno import optimize_noise

    torch.set_num_threads(threads)
    generate, reward, models = build(name, size)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    after_build = status_gb("VmRSS")
    reset_peak()
    saved = SavedBytes(list(models.values()))
    out = {"child": name, "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()},
           "rss_after_build_gb": after_build}
    if generate is not None:
        marks, saved_per_iteration = [], []

        def progress(_):
            marks.append(time.process_time())
            saved_per_iteration.append(saved.take())  # the graph of this evaluation, before its backward

        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            result = optimize_noise(generate, reward, noise, iterations=iterations, callback=progress)
        steps = [b - a for a, b in zip(marks, marks[1:])]
        out.update(iteration_cpu_s=sum(steps) / len(steps), iterations_timed=len(steps),
                   loop_autograd_gib=max(saved_per_iteration) / 2 ** 30, loop_peak_over_build_gb=status_gb("VmHWM") -
                   after_build, best_loss=result.best_loss.tolist(), initial_loss=result.initial_loss.tolist())
        unet_s, unet_bytes = measured(lambda: generate(noise.clone().requires_grad_(True)).square().sum().backward(),
                                      saved)
        out.update(unet_cpu_s=unet_s, unet_autograd_gib=unet_bytes / 2 ** 30)
        with torch.no_grad():
            latent = generate(noise)
    else:  # a fixed latent at the SDXL VAE's raw scale (std 1 / scaling factor), no UNet in memory
        from latent_clip import get_latent_family
        latent = noise / get_latent_family("sdxl").scaling_factor
    reset_peak()
    before = status_gb("VmRSS")
    reward_s, reward_bytes = measured(lambda: reward(latent.clone().requires_grad_(True)).sum().backward(), saved)
    out.update(reward_cpu_s=reward_s, reward_autograd_gib=reward_bytes / 2 ** 30,
               reward_peak_over_before_gb=status_gb("VmHWM") - before)
    return out


def report(runs: dict) -> dict:
    """Prints and returns the ratios of one run. The pixel iteration and its autograd memory are the
    pixel loop's when it ran, else composed: the latent loop's iteration with its reward swapped for the
    pixel one (iteration - Lat + Pix, the same UNet step and loop overhead)."""
    lat, pix_reward = runs["latent"], runs["pixel-reward"]
    swap = pix_reward["reward_cpu_s"] - lat["reward_cpu_s"]
    composed = {"iteration_cpu_s": lat["iteration_cpu_s"] + swap,
                "autograd_gib": lat["loop_autograd_gib"] - lat["reward_autograd_gib"] + pix_reward["reward_autograd_gib"]}
    loop = runs.get("pixel")
    pixel = {"iteration_cpu_s": loop["iteration_cpu_s"], "autograd_gib": loop["loop_autograd_gib"]} if loop else composed
    u = lat["unet_cpu_s"]
    ceiling = 1 - (u + lat["reward_cpu_s"]) / (u + pix_reward["reward_cpu_s"])
    saving = 1 - lat["iteration_cpu_s"] / pixel["iteration_cpu_s"]
    out = {"pixel iteration": "measured loop" if loop else "composed: latent iteration - Lat + Pix",
           "latent iteration, CPU s": lat["iteration_cpu_s"], "pixel iteration, CPU s": pixel["iteration_cpu_s"],
           "UNet fwd+bwd alone (U), CPU s": u, "Lat, CPU s": lat["reward_cpu_s"], "Pix, CPU s": pix_reward["reward_cpu_s"],
           "iteration saving": saving, "ceiling from components, this run": ceiling,
           "saving - ceiling, points": 100 * (saving - ceiling), "anchors' ceiling C1": C1_CEILING,
           "goal: saving >= ceiling - 5 points": saving >= ceiling - 0.05,
           "latent autograd, GiB": lat["loop_autograd_gib"], "pixel autograd, GiB": pixel["autograd_gib"],
           "autograd, pixel / latent": pixel["autograd_gib"] / lat["loop_autograd_gib"],
           "anchors' autograd, pixel / latent (8.3 / 2.6)": ANCHOR_AUTOGRAD_GIB["pixel"] / ANCHOR_AUTOGRAD_GIB["latent"],
           "goal: autograd >= 3x lower": pixel["autograd_gib"] >= 3 * lat["loop_autograd_gib"],
           "reward share of the latent iteration": lat["reward_cpu_s"] / lat["iteration_cpu_s"],
           "Pix / Lat (reward fwd+bwd)": pix_reward["reward_cpu_s"] / lat["reward_cpu_s"]}
    if loop:
        out["pixel loop / composed, time"] = loop["iteration_cpu_s"] / composed["iteration_cpu_s"]
        out["pixel loop / composed, autograd"] = loop["loop_autograd_gib"] / composed["autograd_gib"]
    print("\nmeasured in this one run:")
    for k, v in out.items():
        shown = (f"{v * 100:.1f} %" if k in ("iteration saving", "ceiling from components, this run",
                                              "anchors' ceiling C1", "reward share of the latent iteration")
                 else f"{v:.2f}" if isinstance(v, float) else v)
        print(f"  {k:46s} {shown}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="ReNO evaluations per loop (>= 2; all but the last step)")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the reference measurement used 1)")
    ap.add_argument("--pixel-loop", action="store_true", help="also run the pixel path's loop (about 22 GB at 512 px)")
    ap.add_argument("--min-free-gb", type=float, default=None,
                    help="refuse to start with less memory available (default 16, 23 with --pixel-loop)")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--report-from", help="reprint the summary of a --json file without measuring")
    ap.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iterations < 2:
        ap.error("--iterations must be >= 2 to time a full iteration")
    if args.report_from:
        with open(args.report_from) as f:
            return report(json.load(f)["runs"])
    if args.child:
        print(json.dumps(child(args.child, args.size, args.iterations, args.threads)))
        return {}
    need = args.min_free_gb if args.min_free_gb is not None else (23.0 if args.pixel_loop else 16.0)
    free = available_gb()
    if free < need:
        sys.exit(f"bench_reno_sdxl: {free:.1f} GB available, needs {need:g} (--min-free-gb): the fp32 SDXL UNet "
                 "is 10.3 GB, its activations about 3 GB more, and the pixel loop adds the decode's 6 GB")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size} px, batch 1, {args.iterations} ReNO "
          f"evaluations per loop, {free:.1f} GB available", flush=True)
    runs = {}
    for name in CHILDREN if args.pixel_loop else CHILDREN[:2]:
        cmd = [sys.executable, "-m", "bench.bench_reno_sdxl", "--child", name, "--size", str(args.size),
               "--iterations", str(args.iterations), "--threads", str(args.threads)]
        runs[name] = r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                   cwd=os.getcwd()).stdout.strip().splitlines()[-1])
        loop = (f"iteration {r['iteration_cpu_s']:.1f} s CPU, autograd {r['loop_autograd_gib']:.2f} GiB, peak RSS "
                f"+{r['loop_peak_over_build_gb']:.2f} GB over {r['rss_after_build_gb']:.2f}; UNet alone "
                f"{r['unet_cpu_s']:.1f} s, {r['unet_autograd_gib']:.2f} GiB; " if "iteration_cpu_s" in r else "")
        print(f"{name:12s}: {loop}reward alone {r['reward_cpu_s']:.2f} s, {r['reward_autograd_gib']:.2f} GiB, peak RSS "
              f"+{r['reward_peak_over_before_gb']:.2f} GB", flush=True)
    summary = report(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "runs": runs, "summary": summary}, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
