"""Throughput of ``fit`` steps (samples/s): forward + ClipLoss + backward + AdamW, as train.main
runs them, for a small Latent-CLIP and the true Latent-ViT-B-8-512, on this machine's device.

Random raw latents (B, 4, 64, 64) and random captions' tokens; one warm-up step, then the median
of ``--steps`` timed steps. On CPU fp32 (autocast bf16 only on GPU, as in fit).

    .venv/bin/python -m bench.bench_train [--steps 2] [--batch-small 32] [--batch-b8 8] [--grad-checkpointing]
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
from open_clip.loss import ClipLoss

from latent_clip import LatentCLIP, ModelConfig, get_model_config
from train.main import param_groups
from train.losses import ContrastiveForward

SMALL = {"embed_dim": 256, "vision_cfg": {"image_size": 512, "layers": 4, "width": 256, "patch_size": 8,
                                          "latent_family": "sdxl", "latent_n_channels": 4, "latent_factor": 8},
         "text_cfg": {"width": 256, "heads": 4, "layers": 4}}


def throughput(config: ModelConfig, batch: int, steps: int, device: torch.device, grad_ckpt: bool) -> tuple[float, int]:
    torch.manual_seed(0)
    model = LatentCLIP(config).to(device)
    if grad_ckpt:
        model.set_grad_checkpointing(True)
    forward = ContrastiveForward(model).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    v = config.vision
    z = torch.randn(batch, v.latent_n_channels, v.latent_size, v.latent_size, device=device) * 4
    tokens = open_clip.tokenize([f"a photo of thing number {i}" for i in range(batch)]).to(device)
    on_gpu = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu)
    sync = torch.cuda.synchronize if on_gpu else lambda: None
    times = []
    for i in range(steps + 1):
        sync()
        tic = time.perf_counter()
        with autocast:
            loss = loss_fn(*forward(z, tokens))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - tic)
    params = sum(p.numel() for p in model.parameters())
    return batch / statistics.median(times), params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch-small", type=int, default=32)
    p.add_argument("--batch-b8", type=int, default=8)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, grad checkpointing {args.grad_checkpointing}")
    for name, cfg, batch in (("small (4L/256w, 64x64x4 latents)", ModelConfig.from_dict(SMALL), args.batch_small),
                             ("Latent-ViT-B-8-512", get_model_config("Latent-ViT-B-8-512"), args.batch_b8)):
        rate, params = throughput(cfg, batch, args.steps, device, args.grad_checkpointing)
        print(f"{name:<36} {params / 1e6:7.1f}M params  batch {batch:4d}  {rate:8.2f} samples/s")


if __name__ == "__main__":
    main()
