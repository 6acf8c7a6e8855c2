"""Contrastive training of Latent-CLIP (or a pixel open_clip CLIP) on one CPU or many GPUs.

Reads top to bottom like nanoGPT's train.py. Launch:

    python -m train fit --config smoke --train-data shards/ --out-dir runs        # 1 process (CPU/GPU)
    torchrun --nproc_per_node 8 -m train fit --config paper_b8 --train-data 'lat/{000..500}/{000000..000100}.tar'
    torchrun --nnodes 16 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        -m train fit --config paper_b8 ...
    accelerate launch --multi_gpu --num_processes 8 -m train fit --config paper_b8 ...
    python -m train fit ... --resume latest                                        # continue exactly after a kill

Loss: open_clip's ClipLoss (local loss + gather with grad) and/or, for ``--distill-weight > 0``,
1 - cos(student latent features, frozen pixel teacher's features of the VAE-decoded latents).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from typing import Sequence

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from latent_clip import LatentCLIP, save_export
from latent_clip.contract import non_finite_items
from latent_clip.factory import atomic_write, load_weights

from . import checkpoint
from .data import BatchPlan, MicroBatch, ProblemLog, ShardError, TrainBatches, expand_shards, shard_sizes
from .distributed import barrier, cleanup, init_distributed, mean_across
from .losses import ContrastiveForward, DistillLoss, FitLoss
from .models import DecodedTeacher, build_model, load_pixel_model, load_vae, model_cfg_dict, pixel_transform
from .params import FitConfig, parse_fit_args


EXACT_RESUME_KEYS = ("model", "model_kind", "train_data", "data_split", "batch_size", "micro_batch_size", "seed",
                     "epochs", "samples_per_epoch", "max_steps", "lr", "warmup", "wd", "precision")


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, logit_scale (and any ndim < 2)."""
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}]


def cosine_lr(step: int, cfg: FitConfig, total_steps: int) -> float:
    """open_clip's ``cosine_lr``: linear warmup, then cosine to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * cfg.lr


class TrainingError(RuntimeError):
    """Training cannot go on without feeding or producing NaN/Inf."""


def check_finite_inputs(batch: MicroBatch, step: int) -> None:
    """Raise :class:`TrainingError` naming the first sample of ``batch`` with NaN/Inf values."""
    bad = non_finite_items(batch.inputs)
    if bad:
        raise TrainingError(f"step {step}: {batch.sources[bad[0]]} has NaN/Inf values ({len(bad)} such sample(s) "
                            f"in this micro-batch); nothing was trained on them: fix or remove the data, then "
                            f"--resume latest")


def main(argv: Sequence[str] | None = None) -> list[float]:
    """Train; returns this process's logged global-batch losses (one per step run)."""
    # 1. config, processes, seeds
    cfg = parse_fit_args(argv)
    env = init_distributed(cfg.device)
    run_dir = cfg.run_dir
    resume = checkpoint.find_resume(cfg.resume, run_dir)  # before anything is written into the run folder
    if env.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.manual_seed(cfg.seed)  # identical init everywhere (DDP also broadcasts rank 0's weights)

    # 2. model: scratch, adapted pixel CLIP, or earlier weights; freezing; memory savers
    model = build_model(cfg.model_kind, cfg.model)
    if cfg.init == "pixel-clip":
        checkpoint.adapt_pixel_clip(model, cfg.pretrained)
    elif cfg.init == "checkpoint":
        load_weights(model, cfg.pretrained)
    elif cfg.init != "scratch":
        raise ValueError(f"init must be scratch, pixel-clip or checkpoint, got {cfg.init!r}")
    checkpoint.freeze(model, cfg.freeze)
    if cfg.lock_text:
        model.lock_text_tower()
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(env.device)
    torch.manual_seed(cfg.seed + env.rank)

    # 3. distillation teacher (frozen pixel CLIP on decoded latents)
    distill = None
    if cfg.distill_weight > 0:
        if cfg.model_kind != "latent" or not cfg.vae or not cfg.teacher_model:
            raise ValueError("distillation needs model_kind=latent, --teacher-model and --vae")
        distill = DistillLoss(DecodedTeacher(load_pixel_model(cfg.teacher_model, cfg.teacher_checkpoint, env.device),
                                             load_vae(cfg.vae, env.device)))

    # 4. optimiser, data sizes (unreadable shards count 0 rows) and schedule
    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    shards = expand_shards(cfg.train_data)
    sizes, startup_problems = shard_sizes(shards)
    dataset_size = sum(sizes)
    if not dataset_size:
        raise ShardError(f"no readable samples in the {len(shards)} shards of {cfg.train_data}"
                         + (f" (e.g. {startup_problems[0].detail})" if startup_problems else ""))
    samples_per_epoch = cfg.samples_per_epoch or dataset_size
    total_steps = cfg.max_steps or cfg.epochs * samples_per_epoch // cfg.batch_size

    # 5. resume: weights, optimiser, step (= data position), RNG, bad-data counts; the log cut back to it
    step, ckpt = 0, None
    if resume is not None:
        resume_path, ckpt = resume
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        checkpoint.set_rng_state(ckpt["rng"])
        torch.manual_seed(cfg.seed + env.rank + step)
        if env.is_master:
            changed = {k: (v, getattr(cfg, k)) for k, v in ckpt["config"].items()
                       if k in EXACT_RESUME_KEYS and v != getattr(cfg, k)}
            print(f"resumed from {resume_path} at step {step}"
                  + (f"; WARNING: settings differ from the checkpoint's, the run will not replay exactly: {changed}"
                     if changed else ""), flush=True)
    log_path = run_dir / "log.jsonl"
    if env.is_master:
        checkpoint.trim_log(log_path, step)
    problems = ProblemLog(ckpt.get("data_problems") if ckpt else None)
    data_changed = problems.add(startup_problems if env.is_master else ())  # logged with the next step

    # 6. DDP: unwrap once, keep `model` for saving
    forward = ContrastiveForward(model)
    if env.distributed:
        forward = DDP(forward, device_ids=[env.device] if env.device.type == "cuda" else None,
                      static_graph=cfg.ddp_static_graph)

    # 7. data: micro-batches for steps step, step+1, ... (a pure function of seed and step)
    plan = BatchPlan(cfg.batch_size, cfg.micro_batch_size, env.world_size, env.rank, cfg.data_split)
    transform = pixel_transform(model) if cfg.model_kind == "pixel" else None
    batches = TrainBatches(shards, plan, seed=cfg.seed, start_step=step, transform=transform, sizes=sizes)
    loader = iter(DataLoader(batches, batch_size=None, num_workers=cfg.workers,
                             pin_memory=env.device.type == "cuda") if cfg.workers else batches)

    # 8. loss and precision
    objective = FitLoss(ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
                                 rank=env.rank, world_size=env.world_size),
                        cfg.contrastive_weight, distill, cfg.distill_weight)
    use_amp = cfg.precision == "amp_bfloat16" and env.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    context_length = model.context_length

    # 9. loop; non-finite inputs, loss or gradients stop it before the optimiser applies anything
    losses: list[float] = []
    if env.is_master:
        print(f"fit: {total_steps} steps from {step}, global batch {cfg.batch_size} = {env.world_size} ranks x "
              f"{plan.accum} accum x {cfg.micro_batch_size}, {dataset_size} samples in {len(shards)} shards",
              flush=True)
    forward.train()
    tic = time.time()
    while step < total_steps:
        lr = cosine_lr(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        fetched = [next(loader) for _ in range(plan.accum)]
        data_changed = problems.add([p for b in fetched for p in b.problems]) or data_changed
        for b in fetched:
            check_finite_inputs(b, step + 1)
        micro_batches = [(b.inputs.to(env.device, non_blocking=True),
                          open_clip.tokenize(b.captions, context_length=context_length).to(env.device))
                         for b in fetched]
        named = accumulate_gradients(forward, micro_batches, objective, env.distributed, autocast)
        loss_value = mean_across(env, sum(named.values()))
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):  # the same on every rank (all-reduced)
            raise TrainingError(
                f"step {step + 1}: loss {loss_value}, gradient norm {grad_norm:.4g}: training diverged; nothing of "
                f"this step was applied and no checkpoint holds it (lower --lr, set --grad-clip, or "
                f"--precision fp32), then --resume latest")
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.grad_clip, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as open_clip
        step += 1
        losses.append(loss_value)
        if env.is_master:
            record = {"step": step, "loss": loss_value, "lr": lr, **({"data": problems.counts()} if data_changed else {})}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            data_changed = False
            if step % cfg.log_every == 0 or step == total_steps:
                rate = cfg.batch_size * len(losses) / (time.time() - tic)
                print(f"step {step}/{total_steps} loss {loss_value:.4f} lr {lr:.2e} "
                      f"scale {model.logit_scale.exp().item():.1f} {rate:.1f} samples/s", flush=True)
        if cfg.eval_every and cfg.zeroshot_data and (step % cfg.eval_every == 0 or step == total_steps):
            barrier(env)
            if env.is_master:
                result = zeroshot_eval(model, cfg, env.device)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "zeroshot": result}) + "\n")
                print(f"step {step} zero-shot top1 {100 * result['top1']:.2f} top5 {100 * result['top5']:.2f}",
                      flush=True)
            barrier(env)
            forward.train()
        if cfg.save_every and (step % cfg.save_every == 0 or step == total_steps):
            barrier(env)
            if env.is_master:
                checkpoint.save(run_dir, model, optimizer, step=step, samples_seen=step * cfg.batch_size,
                                epoch=step * cfg.batch_size // samples_per_epoch, config=cfg.to_dict(),
                                model_cfg=model_cfg_dict(model), model_kind=cfg.model_kind,
                                keep=bool(cfg.keep_every) and step % cfg.keep_every == 0,
                                data_problems=problems.state())
            barrier(env)

    # 10. done: the inference export (safetensors + JSON) that the ComfyUI loader reads, and the summary
    if env.is_master:
        if isinstance(model, LatentCLIP) and step == total_steps:
            save_export(model, run_dir / "model.safetensors")
        summary = {"steps": step, "total_steps": total_steps, "final_loss": losses[-1] if losses else None,
                   "data": problems.counts()}
        atomic_write(run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
        print(f"fit: done at step {step}/{total_steps}; bad data skipped: {json.dumps(problems.counts())}", flush=True)
    cleanup(env)
    return losses


def accumulate_gradients(forward: nn.Module, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                         objective: FitLoss, distributed: bool, autocast) -> dict[str, torch.Tensor]:
    """The backward passes of one optimiser step over its micro-batches (open_clip's accum-freq:
    the whole batch's features first without grad, then each micro-batch with grad, the others from
    that cache; DDP syncs on the last one). Returns the batch's weighted losses by name (detached):
    the contrastive loss is the whole batch's in every micro-step, the distillation loss sums its shares."""
    accum, cached, totals = len(micro_batches), None, {}
    if accum > 1:
        with torch.no_grad(), autocast():
            cached = [forward(x, t)[:2] for x, t in micro_batches]
    for micro, (inputs, tokens) in enumerate(micro_batches):
        last = micro == accum - 1
        with (forward.no_sync() if distributed and not last else nullcontext()), autocast():
            image, text, scale = forward(inputs, tokens)
            batch_image, batch_text = image, text
            if cached is not None:  # this micro-batch with grad, the others from the cache
                batch_image = torch.cat([c[0] for c in cached[:micro]] + [image] + [c[0] for c in cached[micro + 1:]])
                batch_text = torch.cat([c[1] for c in cached[:micro]] + [text] + [c[1] for c in cached[micro + 1:]])
                scale = scale if last else scale.detach()  # its gradient counted once
            named = objective(image, inputs, batch_image, batch_text, scale, accum)
        sum(named.values()).backward()
        for name, value in named.items():
            totals[name] = value.detach() + (totals.get(name, 0.0) if name == "distill_loss" else 0.0)
    return totals


@torch.no_grad()
def zeroshot_eval(model: torch.nn.Module, cfg: FitConfig, device: torch.device) -> dict:
    from .evaluate import LatentFeatures, PixelFeatures, classifier, labelled_shards, load_classnames, \
        load_templates, zeroshot
    model.eval()
    classnames = load_classnames(cfg.zeroshot_classnames, cfg.zeroshot_data)
    weights = classifier(model, classnames, load_templates(cfg.zeroshot_templates), device)
    vae = load_vae(cfg.vae, device) if cfg.vae else None
    features = LatentFeatures(model, vae) if cfg.model_kind == "latent" else PixelFeatures(model, vae)
    result = zeroshot(features, weights, labelled_shards(cfg.zeroshot_data))
    return {"top1": result.top1, "top5": result.top5, "n": result.n}
