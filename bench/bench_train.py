"""Cost of ``fit`` steps: forward + ClipLoss + backward + AdamW, as train.main runs them, for a small
Latent-CLIP and the true Latent-ViT-B-8-512, on this machine's device, in one run.

Random raw latents (B, 4, 64, 64) and random captions' tokens. Both models' steps are timed in interleaved
repeats (bench/timing.py: this process's CPU seconds on the CPU, synchronised wall seconds on CUDA) after one
warm-up round; throughput is samples per second of that time, and the per-sample cost of B/8 over the small
model is the median of the per-repeat ratios with its range, beside the same ratio in FLOPs (forward +
loss + backward counted while the warm-up step runs; AdamW's element-wise update is not counted). CPU fp32, autocast
bf16 only on GPU, as in fit.

    .venv/bin/python -m bench.bench_train [--repeats 3] [--batch-small 32] [--batch-b8 8] [--load-check]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import Callable

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import (Ratio, add_timing_options, ceiling_note, clock_for, format_ratio, interleaved, ratio,
                          run_measurement)
from latent_clip import LatentCLIP, ModelConfig, get_model_config
from train.losses import ContrastiveForward
from train.main import param_groups

SMALL = {"embed_dim": 256, "vision_cfg": {"image_size": 512, "layers": 4, "width": 256, "patch_size": 8,
                                          "latent_family": "sdxl", "latent_n_channels": 4, "latent_factor": 8},
         "text_cfg": {"width": 256, "heads": 4, "layers": 4}}


def fit_step(config: ModelConfig, batch: int, device: torch.device, grad_ckpt: bool) -> tuple[Callable[[], None], int]:
    """One fit step of a fresh model (seed 0) on a fixed random batch (each call a step), and the model's
    parameter count."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LatentCLIP(config)
    model.set_grad_checkpointing(grad_ckpt)
    forward = ContrastiveForward(model).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    v = config.vision
    z = torch.randn(batch, v.latent_n_channels, v.latent_size, v.latent_size, device=device) * 4
    tokens = open_clip.tokenize([f"a photo of thing number {i}" for i in range(batch)]).to(device)
    on_gpu = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = loss_fn(*forward(z, tokens))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def warm_up_counting(steps: dict[str, Callable[[], None]]) -> dict[str, float]:
    """The warm-up round: each step run once, untimed, its FLOPs counted (the text tower trims its tokens to the
    longest caption, so a step's cost depends on the data and is counted on it, not on meta tensors)."""
    counted = {}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        counted[name] = counter.get_total_flops()
    return counted


def measure(args: argparse.Namespace) -> dict[str, Ratio]:
    device = torch.device(args.device)
    models = {"small (4L/256w)": (ModelConfig.from_dict(SMALL), args.batch_small),
              "Latent-ViT-B-8-512": (get_model_config("Latent-ViT-B-8-512"), args.batch_b8)}
    steps = {name: fit_step(cfg, batch, device, args.grad_checkpointing) for name, (cfg, batch) in models.items()}
    step_fns = {name: step for name, (step, _) in steps.items()}
    step_flops = warm_up_counting(step_fns)
    seconds = interleaved(step_fns, args.repeats, warmup=0, clock=clock_for(args.device))
    print(f"device {device}, {torch.get_num_threads()} torch threads, grad checkpointing {args.grad_checkpointing}, "
          f"{'CPU time of this process' if device.type == 'cpu' else 'synchronised wall time'}, "
          f"1 warm-up + {args.repeats} interleaved repeats, 64x64x4 latents")
    print(f"{'model':<20} {'params':>8} {'batch':>5} {'GFLOPs/sample':>13} {'s/step':>8} {'samples/s':>9} "
          f"{'GFLOP/s':>8}")
    per_sample, rates = {}, {}
    for name, (cfg, batch) in models.items():
        per_sample[name] = step_flops[name] / batch
        median = statistics.median(seconds[name])
        rates[name] = per_sample[name] * batch / median / 1e9
        print(f"{name:<20} {steps[name][1] / 1e6:7.1f}M {batch:5d} {per_sample[name] / 1e9:13.1f} {median:8.2f} "
              f"{batch / median:9.2f} {rates[name]:8.1f}")
    small, big = models
    r = ratio([t / models[big][1] for t in seconds[big]], [t / models[small][1] for t in seconds[small]])
    flop_ratio = per_sample[big] / per_sample[small]
    name = f"per sample, {big} / {small}"
    print(f"{name}: FLOPs {flop_ratio:.1f}x, time {format_ratio(r)}")
    note = ceiling_note(r, flop_ratio, {big: rates[big], small: rates[small]})
    if note:
        print(f"  {note}")
    return {name: r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_options(p)
    p.add_argument("--batch-small", type=int, default=32)
    p.add_argument("--batch-b8", type=int, default=8)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run_measurement(lambda: measure(args), args)


if __name__ == "__main__":
    main()
