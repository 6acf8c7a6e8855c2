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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from latent_clip import LatentCLIP, save_export
from latent_clip.contract import non_finite_items
from latent_clip.files import atomic_write
from latent_clip.weights import load_weights
from latent_clip.zeroshot import open_clip_classifier

from . import checkpoint, evaluate
from .data import (BatchPlan, MicroBatch, Problem, ProblemLog, ShardError, TrainBatches, expand_shards, open_shard,
                   shard_sizes)
from .distributed import DistEnv, barrier, cleanup, init_distributed, mean_across
from .losses import ContrastiveForward, DistillLoss, FitLoss
from .models import DecodedTeacher, build_model, load_pixel_model, load_vae, model_cfg_dict, pixel_transform
from .params import FitConfig, parse_fit_args


LOG_FILE = "log.jsonl"
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


def main(argv: Sequence[str] | None = None) -> list[float]:
    """``python -m train fit ...``: :func:`fit` with the command line's :class:`FitConfig`."""
    return fit(parse_fit_args(argv))


def fit(cfg: FitConfig) -> list[float]:
    """Train as ``cfg`` says (one process, or each rank under torchrun / accelerate launch); returns this
    process's logged global-batch losses (one per step run)."""
    env = init_distributed(cfg.device)
    resume = checkpoint.find_resume(cfg.resume, cfg.run_dir)  # before anything is written into the run folder
    if env.is_master:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)  # identical init everywhere (DDP also broadcasts rank 0's weights)
    model = init_model(cfg, env.device)
    torch.manual_seed(cfg.seed + env.rank)
    objective = fit_objective(cfg, env)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    data = plan_data(cfg, model)
    total_steps, (step, problems) = data.total_steps, restore(resume, model, optimizer, cfg, env)
    data_changed = problems.add(data.problems if env.is_master else ())  # logged with the next step
    forward = ContrastiveForward(model)  # DDP wraps this; `model` stays unwrapped for saving
    if env.distributed:
        forward = DDP(forward, device_ids=[env.device] if env.device.type == "cuda" else None,
                      static_graph=cfg.ddp_static_graph)
    plan = BatchPlan(cfg.batch_size, cfg.micro_batch_size, env.world_size, env.rank, cfg.data_split)
    loader = batch_loader(cfg, env, model, data, plan, step)  # a pure function of seed and step

    losses: list[float] = []
    stuck = StuckLoss(cfg)
    if env.is_master:
        print(f"fit: {total_steps} steps from {step}, global batch {cfg.batch_size} = {env.world_size} ranks x "
              f"{plan.accum} accum x {cfg.micro_batch_size}, {sum(data.sizes)} samples in {len(data.shards)} shards",
              flush=True)
    forward.train()
    tic = time.time()
    while step < total_steps:
        lr = cosine_lr(step, cfg, total_steps)
        fetched = [next(loader) for _ in range(plan.accum)]
        data_changed = problems.add([p for b in fetched for p in b.problems]) or data_changed
        loss = train_step(model, forward, optimizer, objective, fetched, lr, step + 1, cfg, env)
        step += 1
        losses.append(loss)
        if env.is_master:
            log_step(cfg, model, step, total_steps, loss, lr, problems.counts() if data_changed else None,
                     rate=cfg.batch_size * len(losses) / (time.time() - tic), warning=stuck.check(loss, step))
            data_changed = False
        if cfg.zeroshot_data and due(cfg.eval_every, step, total_steps):
            on_rank0(env, lambda: zeroshot_eval(model, cfg, env.device, step))
            forward.train()
        if due(cfg.save_every, step, total_steps):
            on_rank0(env, lambda: checkpoint.save(
                cfg.run_dir, model, optimizer, step=step, samples_seen=step * cfg.batch_size,
                epoch=step * cfg.batch_size // data.samples_per_epoch, config=asdict(cfg),
                model_cfg=model_cfg_dict(model), model_kind=cfg.model_kind,
                keep=bool(cfg.keep_every) and step % cfg.keep_every == 0, data_problems=problems.state()))
    if env.is_master:
        finish(cfg, model, step, total_steps, losses, problems)
    cleanup(env)
    return losses


def log_step(cfg: FitConfig, model: nn.Module, step: int, total_steps: int, loss: float, lr: float,
             data_counts: dict | None, rate: float, warning: str | None) -> None:
    """Rank 0, after each step: the log line (with the bad-data counts when they changed), a stuck-loss
    warning, and a progress line every ``cfg.log_every`` steps and after the last."""
    if warning:
        print(warning, flush=True)
    append_log(cfg, {"step": step, "loss": loss, "lr": lr, **({"data": data_counts} if data_counts else {})})
    if step % cfg.log_every == 0 or step == total_steps:
        print(f"step {step}/{total_steps} loss {loss:.4f} lr {lr:.2e} "
              f"scale {model.logit_scale.exp().item():.1f} {rate:.1f} samples/s", flush=True)


@dataclass(frozen=True)
class DataPlan:
    shards: list[Path]
    sizes: list[int]               # rows per shard; an unreadable shard counts 0
    problems: list[Problem]        # what made a shard unreadable
    samples_per_epoch: int
    total_steps: int


def plan_data(cfg: FitConfig, model: nn.Module) -> DataPlan:
    """The training data's shards and sizes, checked against ``model`` before the first step (no readable
    sample, or latents of another shape than a Latent-CLIP's config, is an error), and the step count."""
    shards = expand_shards(cfg.train_data)
    sizes, problems = shard_sizes(shards)
    if not sum(sizes):
        raise ShardError(f"no readable samples in the {len(shards)} shards of {cfg.train_data}"
                         + (f" (e.g. {problems[0].detail})" if problems else ""))
    if cfg.model_kind == "latent":
        check_latents_fit(model, shards, sizes)
    samples_per_epoch = cfg.samples_per_epoch or sum(sizes)
    total_steps = cfg.max_steps or cfg.epochs * samples_per_epoch // cfg.batch_size
    return DataPlan(shards, sizes, problems, samples_per_epoch, total_steps)


def batch_loader(cfg: FitConfig, env: DistEnv, model: nn.Module, data: DataPlan, plan: BatchPlan, step: int):
    """This rank's micro-batches from ``step`` on (pixel models get their own image transform), read by
    ``cfg.workers`` DataLoader workers or in this process."""
    transform = pixel_transform(model) if cfg.model_kind == "pixel" else None
    batches = TrainBatches(data.shards, plan, seed=cfg.seed, start_step=step, transform=transform, sizes=data.sizes)
    return iter(DataLoader(batches, batch_size=None, num_workers=cfg.workers,
                           pin_memory=env.device.type == "cuda") if cfg.workers else batches)


def finish(cfg: FitConfig, model: nn.Module, step: int, total_steps: int, losses: list[float],
           problems: ProblemLog) -> None:
    """Rank 0, after the loop: the inference export (safetensors + JSON) the ComfyUI loader reads, once the
    run is complete, and the summary."""
    if isinstance(model, LatentCLIP) and step == total_steps:
        save_export(model, cfg.run_dir / "model.safetensors")
    summary = {"steps": step, "total_steps": total_steps, "final_loss": losses[-1] if losses else None,
               "data": problems.counts()}
    atomic_write(cfg.run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    print(f"fit: done at step {step}/{total_steps}; bad data skipped: {json.dumps(problems.counts())}", flush=True)


def check_latents_fit(model: LatentCLIP, shards: Sequence[Path], sizes: Sequence[int]) -> None:
    """The data's first readable latent against the model config, before the first step: other channels or
    another size than the config's latents is a ``ValueError`` naming both (8x8 tiny-world latents under a
    16x16-latent config with patch 8 make one token per image: the loss stays at ln(batch))."""
    v = model.config.vision
    expected = (v.latent_n_channels, v.latent_size, v.latent_size)
    for path in (p for p, n in zip(shards, sizes) if n):
        try:
            got = tuple(open_shard(path)[0].latent.shape)
        except ShardError:  # CaptionError too
            continue  # an unreadable first row: the next shard's
        if got != expected:
            shape = lambda s: "x".join(map(str, s))  # noqa: E731
            config = f"config {model.config.name}" if model.config.name else "the model config"
            raise ValueError(f"{path}: latents are {shape(got)} (C x H x W), but {config} "
                             f"reads {v.family.description} latents ('{v.latent_family}') of {shape(expected)} "
                             f"({v.image_size} px): encode the data with that VAE and size, or train a config "
                             f"made for these latents")
        return


class StuckLoss:
    """The contrastive loss of features that say nothing is ln(batch) exactly (every pair equally likely):
    :meth:`check` gives one warning when it has stayed there for :data:`STEPS` steps."""

    STEPS = 20
    TOLERANCE = 1e-3  # a learning run leaves ln(batch) by far more (the smoke test's falls > 0.4 in 24 steps)

    def __init__(self, cfg: FitConfig):
        self.level = math.log(cfg.batch_size) if cfg.distill_weight == 0 and cfg.contrastive_weight == 1 else None
        self.run, self.warned = 0, False

    def check(self, loss: float, step: int) -> str | None:
        if self.level is None or self.warned:
            return None
        self.run = self.run + 1 if abs(loss - self.level) < self.TOLERANCE else 0
        if self.run < self.STEPS:
            return None
        self.warned = True
        return (f"warning: step {step}: the loss has stayed at ln(batch {round(math.exp(self.level))}) = "
                f"{self.level:.4f} for {self.STEPS} steps: the model tells no pair apart (data it cannot read, "
                f"identical samples or captions, or a learning rate too high or too low)")


def init_model(cfg: FitConfig, device: torch.device) -> nn.Module:
    """The model to train, on ``device``: from scratch, an adapted pixel CLIP or earlier weights,
    then frozen, text-locked and gradient-checkpointed as configured."""
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
    return model.to(device)


def fit_objective(cfg: FitConfig, env: DistEnv) -> FitLoss:
    """open_clip's ClipLoss across the ranks and, for ``--distill-weight > 0``, distillation from a
    frozen pixel CLIP teacher on the VAE-decoded latents."""
    distill = None
    if cfg.distill_weight > 0:
        if cfg.model_kind != "latent" or not cfg.vae or not cfg.teacher_model:
            raise ValueError("distillation needs model_kind=latent, --teacher-model and --vae")
        distill = DistillLoss(DecodedTeacher(load_pixel_model(cfg.teacher_model, cfg.teacher_checkpoint, env.device),
                                             load_vae(cfg.vae, env.device)))
    return FitLoss(ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, rank=env.rank,
                            world_size=env.world_size), cfg.contrastive_weight, distill, cfg.distill_weight)


def restore(resume: tuple[Path, dict] | None, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FitConfig,
            env: DistEnv) -> tuple[int, ProblemLog]:
    """The step to start from and the bad-data counts so far: 0 and none for a fresh run, else the
    checkpoint's, with its weights, optimiser and RNG restored. The log is cut back to that step."""
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
    if env.is_master:
        checkpoint.trim_log(cfg.run_dir / LOG_FILE, step)
    return step, ProblemLog(ckpt.get("data_problems") if ckpt else None)


def train_step(model: nn.Module, forward: nn.Module, optimizer: torch.optim.Optimizer, objective: FitLoss,
               fetched: list[MicroBatch], lr: float, step: int, cfg: FitConfig, env: DistEnv) -> float:
    """Optimiser step number ``step`` at ``lr`` over its micro-batches; returns the global batch's loss.
    Non-finite inputs, loss or gradients raise :class:`TrainingError` before anything is applied."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    for b in fetched:
        bad = non_finite_items(b.inputs)
        if bad:
            raise TrainingError(f"step {step}: {b.sources[bad[0]]} has NaN/Inf values ({len(bad)} such sample(s) in "
                                f"this micro-batch); nothing was trained on them: fix or remove the data, then "
                                f"--resume latest")
    micro_batches = [(b.inputs.to(env.device, non_blocking=True),
                      open_clip.tokenize(b.captions, context_length=model.context_length).to(env.device))
                     for b in fetched]
    use_amp = cfg.precision == "amp_bfloat16" and env.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    loss = mean_across(env, sum(accumulate_gradients(forward, micro_batches, objective, env.distributed,
                                                     autocast).values()))
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # the same on every rank (all-reduced)
        raise TrainingError(
            f"step {step}: loss {loss}, gradient norm {grad_norm:.4g}: training diverged; nothing of "
            f"this step was applied and no checkpoint holds it (lower --lr, set --grad-clip, or "
            f"--precision fp32), then --resume latest")
    if cfg.grad_clip:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.grad_clip, grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # as open_clip
    return loss


def due(every: int, step: int, total_steps: int) -> bool:
    """Whether a task run every ``every`` steps (0: never) runs after ``step``; always after the last."""
    return bool(every) and (step % every == 0 or step == total_steps)


def on_rank0(env: DistEnv, work: Callable[[], object]) -> None:
    """``work()`` on rank 0 only, every rank waiting before and after (evaluation, checkpoints)."""
    barrier(env)
    if env.is_master:
        work()
    barrier(env)


def append_log(cfg: FitConfig, record: dict) -> None:
    with open(cfg.run_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


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
def zeroshot_eval(model: torch.nn.Module, cfg: FitConfig, device: torch.device, step: int) -> None:
    """Zero-shot top-1 / top-5 on ``cfg.zeroshot_data`` after ``step``, logged and printed."""
    model.eval()
    classnames = evaluate.load_classnames(cfg.zeroshot_classnames, cfg.zeroshot_data)
    weights = open_clip_classifier(model, classnames, evaluate.load_templates(cfg.zeroshot_templates), device)
    vae = load_vae(cfg.vae, device) if cfg.vae else None
    features = (evaluate.LatentFeatures if cfg.model_kind == "latent" else evaluate.PixelFeatures)(model, vae)
    result = evaluate.zeroshot(features, weights, evaluate.labelled_shards(cfg.zeroshot_data))
    append_log(cfg, {"step": step, "zeroshot": {"top1": result.top1, "top5": result.top5, "n": result.n}})
    print(f"step {step} zero-shot top1 {100 * result.top1:.2f} top5 {100 * result.top5:.2f}", flush=True)
