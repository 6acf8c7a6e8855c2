"""Fit configuration: one dataclass, loaded from JSON (``train/configs/*.json``) and overridden by
``--field value`` flags generated from the dataclass fields (``--batch-size 64``)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class FitConfig:
    # model
    model: Any = "Latent-ViT-B-8-512"  # latent: config name/JSON path/dict; pixel: open_clip name/JSON/dict
    model_kind: str = "latent"         # "latent" (LatentCLIP on raw latents) | "pixel" (open_clip CLIP on images)
    init: str = "scratch"              # "scratch" | "pixel-clip" (adapt a pixel open_clip checkpoint) | "checkpoint"
    pretrained: str | None = None      # weights for init="pixel-clip"/"checkpoint"
    freeze: str = "none"               # "none" | "patch-embed" (stage 1: only latent_vit.conv1 + pos. embedding)
    lock_text: bool = False
    # distillation from a frozen pixel CLIP teacher on decoded latents (distill_weight > 0 turns it on)
    teacher_model: Any = None          # open_clip name / JSON path / dict of the teacher
    teacher_checkpoint: str | None = None
    vae: str | None = None             # local diffusers AutoencoderKL (folder or .safetensors) to decode latents
    distill_weight: float = 0.0        # weight of (1 - cos(student image feats, teacher image feats))
    contrastive_weight: float = 1.0
    # data
    train_data: str = ""               # shard dir / glob / brace pattern ("::" separates several)
    data_split: str = "rows"           # "rows" (exact; DDP == 1 process) | "shards" (rank reads shards i % world)
    workers: int = 1
    # batch and schedule
    batch_size: int = 81920            # global batch per optimiser step
    micro_batch_size: int = 640        # per rank per micro-step; accumulation = batch / (micro * world)
    epochs: int = 13
    samples_per_epoch: int = 0         # 0: the dataset size
    max_steps: int = 0                 # >0 overrides epochs x samples_per_epoch
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    wd: float = 0.2
    warmup: int = 3000
    grad_clip: float = 0.0
    # precision and memory
    precision: str = "amp_bfloat16"    # "amp_bfloat16" (autocast on GPU; fp32 on CPU) | "fp32"
    grad_checkpointing: bool = True
    local_loss: bool = True
    gather_with_grad: bool = True
    ddp_static_graph: bool = False
    device: str = "auto"
    # bookkeeping
    out_dir: str = "runs"
    name: str = "latent-clip"
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000
    keep_every: int = 0                # >0 also keeps step_{N}.pt every N steps
    resume: str | None = None          # "latest" or a checkpoint path
    # zero-shot during training (latent shards with labels, or an image folder + vae)
    eval_every: int = 0
    zeroshot_data: str | None = None
    zeroshot_classnames: str | None = None  # file with one name per line, or "imagenet"; default: from data
    zeroshot_templates: str = "simple"

    def __post_init__(self):  # paths given as Path objects (a caller of fit) are kept as the strings argv gives
        for name in ("train_data", "pretrained", "teacher_checkpoint", "vae", "resume", "zeroshot_data", "name",
                     "out_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file() and (CONFIG_DIR / f"{path}.json").is_file():
        path = CONFIG_DIR / f"{path}.json"
    return json.loads(path.read_text())


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_fit_args(argv: Sequence[str] | None) -> FitConfig:
    """``--config NAME_OR_PATH`` then ``--field value`` overrides (values parsed as JSON when they
    are JSON: numbers, true/false, null, dicts; otherwise strings)."""
    parser = argparse.ArgumentParser(prog="python -m train fit", description=__doc__)
    parser.add_argument("--config", help="JSON under train/configs/ (name) or a path")
    for f in fields(FitConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_parse_value,
                            default=argparse.SUPPRESS, help=f"default {f.default!r}")
    args = vars(parser.parse_args(argv))
    config = args.pop("config")
    values = load_config(config) if config else {}
    unknown = set(values) - {f.name for f in fields(FitConfig)}
    if unknown:
        raise SystemExit(f"unknown config keys: {sorted(unknown)}")
    values.update(args)
    return FitConfig(**values)
