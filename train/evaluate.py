"""Zero-shot classification: top-1 / top-5 of a Latent-CLIP, and of a pixel open_clip model on the
same data side by side (the paper's table).

Data: an ImageNet-style folder (one sub-folder per class; encoded to latents on the fly with a
local VAE), latent shards with labels (``cls``; written by ``train encode --labels-from-folders``),
or image webdataset shards with ``cls``. Class names: ``imagenet`` (open_clip's), a file with one
name per line, or by default the data's own (``classnames.txt`` beside the shards / folder names).

    python -m train eval zeroshot --data val/ --model runs/x/checkpoints/epoch_latest.pt \\
        --vae sdxl-vae/ --classnames imagenet --templates openai \\
        --pixel-model ViT-B-32 --pixel-checkpoint vit_b32.pt
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from torch import nn

from latent_clip import LatentCLIP, load_model
from latent_clip.contract import non_finite_items
from latent_clip.fields import MAX_FIELD_CHARS
from latent_clip.filebounds import read_bounded
from latent_clip.zeroshot import open_clip_classifier, parse_labels, parse_templates

from .data import FolderShard, ImageTransform, Sample, expand_shards, folder_rows, open_shard
from .models import DecodedTeacher, load_pixel_model, load_vae, pixel_transform

TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES,
             "identity": ("{}",), "photo": ("a photo of a {}.",)}
CLASSNAMES_FILE = "classnames.txt"


@dataclass
class ZeroShotResult:
    top1: float
    top5: float
    n: int


def load_templates(spec: str) -> Sequence:
    """A named template set, or a file with one template per line, each with ``{}`` and no other braces."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    return parse_templates(read_text_field(spec))


def read_text_field(path: str | Path) -> str:
    """A text file given for a field (class names, templates), read with the field's bound."""
    return read_bounded(Path(path), MAX_FIELD_CHARS * 4, "text").decode("utf-8")  # 4: UTF-8 bytes per character


def load_classnames(spec: str | None, data: str | Path) -> list[str]:
    if spec == "imagenet":
        return list(IMAGENET_CLASSNAMES)
    if spec:
        return parse_labels(read_text_field(spec))
    data = Path(data)
    folder = data if data.is_dir() else expand_shards(data)[0].parent
    if (folder / CLASSNAMES_FILE).is_file():
        return load_classnames(str(folder / CLASSNAMES_FILE), data)
    if data.is_dir() and any(p.is_dir() for p in data.iterdir()):
        return [p.name.replace("_", " ") for p in sorted(q for q in data.iterdir() if q.is_dir())]
    raise ValueError(f"no class names: pass --classnames (a file or 'imagenet') for {data}")


def labelled_shards(data: str | Path) -> list:
    """Readers over labelled samples: an ImageNet-style folder or labelled shards."""
    data = Path(data)
    if data.is_dir() and any(p.is_dir() for p in data.iterdir()):
        rows, _ = folder_rows(data, labels_from_folders=True)
        return [FolderShard(rows)]
    return [open_shard(p) for p in expand_shards(data)]


def batches(shards: Sequence, batch_size: int) -> Iterator[list[Sample]]:
    samples = (shard[i] for shard in shards for i in range(len(shard)))
    while batch := list(itertools.islice(samples, batch_size)):
        yield batch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()


@torch.no_grad()
def zeroshot(features: Callable[[list[Sample]], torch.Tensor | None], weights: torch.Tensor,
             shards: Sequence, batch_size: int = 64) -> ZeroShotResult:
    """Run ``features`` (samples -> normalised image features) over labelled data and count
    top-1/top-5 hits against the classifier ``weights`` (embed_dim, classes); NaN/Inf features
    raise, naming the samples."""
    hits1 = hits5 = n = 0
    for batch in batches(shards, batch_size):
        for s in batch:
            if s.label < 0:
                raise ValueError(f"sample {s.key} has no label (cls)")
        f = features(batch)
        bad = non_finite_items(f)
        if bad:
            raise ValueError(f"NaN/Inf features for samples {[batch[i].key for i in bad][:5]}: the model's weights "
                             f"are not finite or overflow in its dtype")
        labels = torch.tensor([s.label for s in batch], device=f.device)
        logits = f.float() @ weights.float().to(f.device)
        hits1 += topk_correct(logits, labels, 1)
        hits5 += topk_correct(logits, labels, 5)
        n += len(batch)
    return ZeroShotResult(top1=hits1 / max(n, 1), top5=hits5 / max(n, 1), n=n)


class LatentFeatures:
    """Samples -> Latent-CLIP features: stored latents as they are, images through the VAE
    (resize/crop to ``image_size``, [-1, 1], posterior mean)."""

    def __init__(self, model: LatentCLIP, vae=None, image_size: int | None = None):
        self.model, self.vae = model, vae
        self.transform = ImageTransform(image_size or model.config.vision.image_size)

    def __call__(self, batch: list[Sample]) -> torch.Tensor:
        if batch[0].latent is not None:
            z = torch.stack([s.latent for s in batch])
            bad = non_finite_items(z)
            if bad:
                raise ValueError(f"stored latents of samples {[batch[i].key for i in bad][:5]} contain NaN/Inf")
        else:
            if self.vae is None:
                raise ValueError("image data needs --vae to be encoded to latents")
            x = torch.stack([self.transform(s.image()) for s in batch]).to(self.vae.device, self.vae.dtype)
            z = self.vae.encode(x).latent_dist.mean
        return self.model.encode_latents(z.float(), normalize=True)


class PixelFeatures:
    """Samples -> pixel CLIP features: images through open_clip's transform; stored latents are
    decoded with the VAE first (so latent shards can be compared too)."""

    def __init__(self, model: nn.Module, vae=None):
        self.model, self.transform = model, pixel_transform(model)
        self.decoded = DecodedTeacher(model, vae) if vae is not None else None

    def __call__(self, batch: list[Sample]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if batch[0].latent is not None:
            if self.decoded is None:
                raise ValueError("latent data needs --vae to be decoded for the pixel model")
            return self.decoded(torch.stack([s.latent for s in batch]).to(device))
        x = torch.stack([self.transform(s.image()) for s in batch]).to(device)
        return self.model.encode_image(x, normalize=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train eval zeroshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageNet-style folder or labelled shards")
    p.add_argument("--model", help="Latent-CLIP weights (official checkpoint, state dict or export)")
    p.add_argument("--config", help="Latent-CLIP config (name/JSON) when the weights do not say")
    p.add_argument("--vae", help="local diffusers AutoencoderKL (folder or .safetensors)")
    p.add_argument("--vae-config", help="diffusers config folder for a single-file VAE")
    p.add_argument("--image-size", type=int, help="pixels fed to the VAE (default: the model's image_size)")
    p.add_argument("--pixel-model", help="open_clip model name / JSON config of a pixel CLIP to compare")
    p.add_argument("--pixel-checkpoint", help="local weights of the pixel CLIP")
    p.add_argument("--classnames", help="'imagenet' or a file with one class name per line")
    p.add_argument("--templates", default="openai", help="openai | simple | photo | identity | a file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if not args.model and not args.pixel_model:
        p.error("give --model and/or --pixel-model")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    if argv and argv[0] == "zeroshot":
        argv = argv[1:]
    args = parse_args(argv)
    device = torch.device(args.device)
    classnames = load_classnames(args.classnames, args.data)
    templates = load_templates(args.templates)
    shards = labelled_shards(args.data)
    vae = load_vae(args.vae, device, config=args.vae_config) if args.vae else None
    results = {}
    if args.model:
        model = load_model(args.model, config=args.config, device=device, vae_encoder=False)
        weights = open_clip_classifier(model, classnames, templates, device)
        features = LatentFeatures(model, vae, args.image_size)
        results["latent"] = zeroshot(features, weights, shards, args.batch_size)
    if args.pixel_model:
        pixel = load_pixel_model(args.pixel_model, args.pixel_checkpoint, device)
        weights = open_clip_classifier(pixel, classnames, templates, device)
        results["pixel"] = zeroshot(PixelFeatures(pixel, vae), weights, shards, args.batch_size)
    table = {k: asdict(v) for k, v in results.items()}
    print(f"{'model':<8} {'top1':>7} {'top5':>7} {'n':>7}")
    for k, v in results.items():
        print(f"{k:<8} {100 * v.top1:7.2f} {100 * v.top5:7.2f} {v.n:7d}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table
