"""What does one ReNO iteration cost on SDXL-Turbo at true size: Latent-CLIP reward vs decode + pixel CLIP?

Question: per stepped iteration of ``latent_clip.reno.optimize_noise`` on SDXL-Turbo's UNet at 512 px
(UNet fwd+bwd + reward fwd+bwd + regulariser + SGD step), what do the two reward paths cost in CPU
time and memory, and how close does the latent path's saving come to its ceiling?

* time: CPU seconds of an iteration (between two progress callbacks of the real loop), per path;
  the ceiling is ``1 - (U + Lat) / (U + Pix)`` from the components timed alone in the same run
  (U: UNet fwd+bwd w.r.t. the noise, Lat: Latent-ViT-B/8 reward fwd+bwd, Pix: SDXL-VAE decode +
  open_clip ViT-L-14 reward fwd+bwd). The project's compute anchors put it at 56.9 % (row C1).
* memory: what autograd saves for backward in one iteration (bytes of the distinct tensors packed
  by a saved-tensors hook: the UNet's activations plus the reward's; the anchors' 8.3 -> 2.6 GiB),
  and the peak RSS of the iteration over the RSS after building the models (the OS's view).

Models are built from their configs with random weights (no downloads), fp32, eval, frozen:
diffusers ``UNet2DConditionModel`` with SDXL's config (2,567.5 M params, ``text_time`` added
conditioning), the SDXL VAE decoder (scaling from ``latent_clip/latent_families.json``), open_clip
ViT-L-14 and Latent-ViT-B-8-512. Each path runs in its own child process, one after the other,
1 torch thread by default; the fp32 UNet alone is 10.3 GB and the pixel path adds about 9 GB, so
the parent refuses to start with less than ``--min-free-gb`` (18) available.

    .venv/bin/python -m bench.bench_reno_sdxl --iterations 3 --size 512 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

C1_CEILING = 0.569  # compute anchor C1, CPU time on the anchors' machine (the goal: within 5 points of this run's)
ANCHOR_AUTOGRAD_GIB = {"latent": 2.6, "pixel": 8.3}  # compute anchors, fp32 tensor peaks of one iteration
SDXL_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
PATHS = ("latent", "pixel")
PROMPT = "a photo of an astronaut riding a horse"


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2 ** 20


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20


def reset_peak_rss() -> None:
    """Linux: the high-water mark VmHWM restarts from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


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


def build(path: str, size: int):
    """(generate: noise -> raw latents, reward: raw latents -> (1,) loss, the models)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from bench.bench_reno import SD_VAE, frozen
    from latent_clip import LatentCLIP, get_latent_family, get_model_config, scaled_to_raw
    from latent_clip.rewards import latent_alignment, pixel_alignment

    torch.manual_seed(0)
    unet = frozen(UNet2DConditionModel(**SDXL_UNET))
    family = get_latent_family("sdxl")  # SDXL-Turbo's VAE; its scale comes from the registry, not code
    alpha_bar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[999]
    context, pooled = torch.randn(1, 77, 2048), torch.randn(1, 1280)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)

    def generate(noise):
        """SDXL-Turbo one step at t=999 (eps prediction): x0 in UNet space, then raw VAE latents."""
        eps = unet(noise, 999, encoder_hidden_states=context,
                   added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        return scaled_to_raw((noise - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), family)

    if path == "latent":
        lclip = frozen(LatentCLIP(get_model_config("Latent-ViT-B-8-512")))
        return generate, latent_alignment(lclip, PROMPT), {"unet": unet, "reward": lclip.visual}
    import open_clip
    vae = frozen(AutoencoderKL(**SD_VAE, scaling_factor=family.scaling_factor))
    clip = frozen(open_clip.create_model("ViT-L-14", pretrained=None))
    reward = pixel_alignment(clip, open_clip.get_tokenizer("ViT-L-14"), PROMPT, lambda raw: vae.decode(raw).sample)
    return generate, reward, {"unet": unet, "reward": torch.nn.ModuleList([vae.decoder, vae.post_quant_conv,
                                                                          clip.visual])}


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def child(path: str, size: int, iterations: int, threads: int) -> dict:
    from latent_clip.reno import optimize_noise

    torch.set_num_threads(threads)
    generate, reward, models = build(path, size)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    after_build = rss_gb()
    reset_peak_rss()
    saved, marks, saved_per_iteration = SavedBytes(list(models.values())), [], []

    def progress(_):
        marks.append((time.perf_counter(), time.process_time()))
        saved_per_iteration.append(saved.take())  # the graph of this evaluation, before its backward

    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        result = optimize_noise(generate, reward, noise, iterations=iterations, callback=progress)
    loop_peak = peak_rss_gb()
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]

    def unet_alone():
        e = noise.clone().requires_grad_(True)
        generate(e).square().sum().backward()

    with torch.no_grad():
        latent = generate(noise)
    unet_cpu = cpu_seconds(unet_alone)
    latent.requires_grad_(True)
    reward_cpu = cpu_seconds(lambda: reward(latent).sum().backward())
    return {"path": path, "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()},
            "iteration_cpu_s": sum(c for _, c in steps) / len(steps),
            "iteration_wall_s": sum(w for w, _ in steps) / len(steps), "iterations_timed": len(steps),
            "unet_fwd_bwd_cpu_s": unet_cpu, "reward_fwd_bwd_cpu_s": reward_cpu,
            "autograd_saved_gib": max(saved_per_iteration) / 2 ** 30, "rss_after_build_gb": after_build,
            "loop_peak_rss_gb": loop_peak, "loop_peak_over_weights_gb": loop_peak - after_build,
            "best_loss": result.best_loss.tolist(), "initial_loss": result.initial_loss.tolist()}


def summarise(runs: dict) -> dict:
    lat, pix = runs["latent"], runs["pixel"]
    unet = (lat["unet_fwd_bwd_cpu_s"] + pix["unet_fwd_bwd_cpu_s"]) / 2
    ceiling = 1 - (unet + lat["reward_fwd_bwd_cpu_s"]) / (unet + pix["reward_fwd_bwd_cpu_s"])
    saving = 1 - lat["iteration_cpu_s"] / pix["iteration_cpu_s"]
    return {"iteration saving (CPU)": saving, "ceiling from components, this run": ceiling,
            "saving - ceiling (points)": 100 * (saving - ceiling), "anchors' ceiling C1": C1_CEILING,
            "goal: saving >= ceiling - 5 points": saving >= ceiling - 0.05,
            "autograd saved, pixel / latent": pix["autograd_saved_gib"] / lat["autograd_saved_gib"],
            "anchors' autograd ratio (8.3 / 2.6)": ANCHOR_AUTOGRAD_GIB["pixel"] / ANCHOR_AUTOGRAD_GIB["latent"],
            "goal: autograd >= 3x lower": pix["autograd_saved_gib"] >= 3 * lat["autograd_saved_gib"],
            "peak RSS over weights, pixel / latent": pix["loop_peak_over_weights_gb"] / lat["loop_peak_over_weights_gb"],
            "reward share of iteration, latent": lat["reward_fwd_bwd_cpu_s"] / lat["iteration_cpu_s"],
            "reward share of iteration, pixel": pix["reward_fwd_bwd_cpu_s"] / pix["iteration_cpu_s"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="ReNO evaluations per path (>= 2; all but the last step)")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the anchors used 1)")
    ap.add_argument("--min-free-gb", type=float, default=18.0, help="refuse to start with less memory available")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iterations < 2:
        ap.error("--iterations must be >= 2 to time a full iteration")
    if args.child:
        print(json.dumps(child(args.child, args.size, args.iterations, args.threads)))
        return {}
    free = available_gb()
    if free < args.min_free_gb:
        sys.exit(f"bench_reno_sdxl: {free:.1f} GB available, needs {args.min_free_gb:g} (--min-free-gb): the fp32 "
                 "SDXL UNet is 10.3 GB and the pixel path's activations about 9 GB more")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size} px, batch 1, {args.iterations} ReNO "
          f"evaluations per path, {free:.1f} GB available", flush=True)
    runs = {}
    for path in PATHS:
        cmd = [sys.executable, "-m", "bench.bench_reno_sdxl", "--child", path, "--size", str(args.size),
               "--iterations", str(args.iterations), "--threads", str(args.threads)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=os.getcwd())
        runs[path] = r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{path:6s}: iteration {r['iteration_cpu_s']:.1f} s CPU ({r['iteration_wall_s']:.1f} s wall); UNet "
              f"fwd+bwd {r['unet_fwd_bwd_cpu_s']:.1f} s, reward fwd+bwd {r['reward_fwd_bwd_cpu_s']:.2f} s; autograd "
              f"saves {r['autograd_saved_gib']:.2f} GiB; peak RSS {r['loop_peak_rss_gb']:.2f} GB "
              f"({r['loop_peak_over_weights_gb']:.2f} over {r['rss_after_build_gb']:.2f} after building)", flush=True)
    summary = summarise(runs)
    print("\nmeasured in this one run:")
    for k, v in summary.items():
        shown = v if isinstance(v, bool) else (f"{v * 100:.1f} %" if isinstance(v, float) and abs(v) < 1.5 and
                                               "/" not in k and "points" not in k else f"{v:.2f}")
        print(f"  {k:40s} {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "paths": runs, "summary": summary}, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
