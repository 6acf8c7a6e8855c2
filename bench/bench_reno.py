"""What does one ReNO iteration cost with the Latent-CLIP reward, against the pixel path?

Question: per stepped iteration of ``latent_clip.reno.optimize_noise`` (one-step SD-Turbo UNet
fwd+bwd + reward fwd+bwd + regulariser + SGD step), how much does replacing the pixel reward
(VAE decode + open_clip ViT-L-14) by a Latent-ViT-B/8 reward save, what share of the iteration
is the reward, and how close does the saving come to its ceiling (a reference measurement:
1 - (UNet + Latent-ViT-B/8) / (UNet + VAE decode + ViT-L/14) = 71.9 % CPU time, SD-Turbo 512 px)?

Every model is built from its config with random weights (no downloads), fp32, eval,
requires_grad False: diffusers UNet2DConditionModel with the SD-2.1-base config (SD-Turbo's
UNet, 866 M params), the SD VAE decoder, open_clip ViT-L-14 without pretrained weights, and
Latent-CLIP Latent-ViT-B-8-512. Both paths run in this one process, one after the other.

Slow on CPU: about 4-8 min with 1 thread at 512 px, batch 1::

    .venv/bin/python -m bench.bench_reno --iterations 2 --size 512 [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from latent_clip import LatentCLIP, get_latent_family, get_model_config, scaled_to_raw
from latent_clip.reno import optimize_noise
from latent_clip.rewards import latent_alignment, pixel_alignment

B1_CEILING = 0.719  # the reference ceiling (FLOP-matched CPU time, 1 thread), see the docstring
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False)


def turbo_one_step(unet, family, **conditioning):
    """SD/SDXL-Turbo one step at t=999 (eps prediction): noise -> x0 in UNet space -> raw VAE latents."""
    from diffusers import DDPMScheduler

    alpha_bar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[999]

    def generate(noise):
        eps = unet(noise, 999, **conditioning).sample
        return scaled_to_raw((noise - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), family)
    return generate


def build(args):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import open_clip

    torch.manual_seed(0)
    with Clock() as c:
        unet = frozen(UNet2DConditionModel(**SD21_BASE_UNET))
        vae = frozen(AutoencoderKL(**SD_VAE))
        clip = frozen(open_clip.create_model("ViT-L-14", pretrained=None))
        lclip = frozen(LatentCLIP(get_model_config("Latent-ViT-B-8-512")))
    print(f"built models in {c.wall:.1f} s: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M, "
          f"VAE decoder {sum(p.numel() for p in vae.decoder.parameters()) / 1e6:.1f} M, "
          f"ViT-L-14 visual {sum(p.numel() for p in clip.visual.parameters()) / 1e6:.1f} M, "
          f"Latent-ViT-B/8 visual {sum(p.numel() for p in lclip.visual.parameters()) / 1e6:.1f} M", flush=True)
    family = get_latent_family("sd15")  # SD-Turbo's VAE; its scale comes from the registry, not code
    generate = turbo_one_step(unet, family, encoder_hidden_states=torch.randn(args.batch, 77, 1024))

    prompt = "a photo of an astronaut riding a horse"
    rewards = {"latent (Latent-ViT-B/8)": latent_alignment(lclip, prompt),
               "pixel (VAE decode + ViT-L-14)": pixel_alignment(clip, open_clip.get_tokenizer("ViT-L-14"),
                                                                prompt, lambda raw: vae.decode(raw).sample)}
    return generate, rewards


def run_path(generate, reward, noise, iterations):
    """The real loop. An iteration's cost is the time between two progress callbacks (backward
    + step of one iterate, then generate + reward of the next), in wall and process-CPU
    seconds (CPU time is what the reference measurements compare; wall suffers from shared cores).
    Then the reward alone, fwd+bwd w.r.t. a fixed latent."""
    marks = []
    with Clock() as loop:
        result = optimize_noise(generate, reward, noise, iterations=iterations,
                                callback=lambda p: marks.append((time.perf_counter(), time.process_time())))
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    with torch.no_grad():
        latent = generate(noise).detach()
    latent.requires_grad_(True)
    with Clock() as r:
        reward(latent).sum().backward()
    return {"iteration_wall_s": sum(w for w, _ in steps) / len(steps),
            "iteration_cpu_s": sum(c for _, c in steps) / len(steps), "iterations_timed": len(steps),
            "loop_wall_s": loop.wall, "loop_cpu_s": loop.cpu, "loop_iterations": iterations,
            "reward_fwd_bwd_wall_s": r.wall, "reward_fwd_bwd_cpu_s": r.cpu,
            "best_loss": result.best_loss.tolist(), "initial_loss": result.initial_loss.tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=2, help="ReNO evaluations per path (>= 2; all but the last step)")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the reference measurement used 1)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)
    if args.iterations < 2:
        ap.error("--iterations must be >= 2 to time a full iteration")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.size} px, "
          f"{args.iterations} ReNO iterations per path", flush=True)
    generate, rewards = build(args)
    noise = torch.randn(args.batch, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, reward in rewards.items():
        out[name] = r = run_path(generate, reward, noise, args.iterations)
        print(f"{name}: iteration {r['iteration_cpu_s']:.2f} s CPU / {r['iteration_wall_s']:.2f} s wall; "
              f"reward fwd+bwd {r['reward_fwd_bwd_cpu_s']:.2f} s CPU / {r['reward_fwd_bwd_wall_s']:.2f} s wall; "
              f"loop {r['loop_cpu_s']:.1f} s CPU / {r['loop_wall_s']:.1f} s wall", flush=True)
    lat, pix = out.values()
    ratios = {}
    for clock in ("cpu", "wall"):
        it, rw = f"iteration_{clock}_s", f"reward_fwd_bwd_{clock}_s"
        saving = 1 - lat[it] / pix[it]
        ratios[clock] = {
            "iteration pixel / latent": pix[it] / lat[it],
            "iteration saving (1 - latent / pixel)": saving,
            "reward share of iteration, latent path": lat[rw] / lat[it],
            "reward share of iteration, pixel path": pix[rw] / pix[it],
            "reward fwd+bwd pixel / latent": pix[rw] / lat[rw],
            "saving / B1 ceiling (71.9 % CPU)": saving / B1_CEILING,
        }
        print(f"\nratios ({clock} time, measured in this one run):")
        for k, v in ratios[clock].items():
            print(f"  {k:42s} {v * 100:7.1f} %" if "share" in k or "saving" in k else f"  {k:42s} {v:7.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "paths": out, "ratios": ratios,
                       "torch": torch.__version__, "b1_ceiling": B1_CEILING}, f, indent=2)
    assert all(math.isfinite(v) for r in ratios.values() for v in r.values())
    return ratios


if __name__ == "__main__":
    main()
