"""The two CLIPs of claim 1, trained on the same pairs with ``python -m train fit``: a
Latent-CLIP on the tiny VAE's raw 8 x 8 x 4 latents and a pixel open_clip CLIP on the 64 px
images, matched in size (both towers 64 tokens + CLS, same widths, depths and text tower).

Also: the data they train on (image tar shards -> ``python -m train encode`` -> latent shards)
and the per-category zero-shot evaluation on held-out samples.
"""
from __future__ import annotations

import io
import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from latent_clip import LatentCLIP, ModelConfig, build_classifier, classify
from latent_clip.pixel_clip import clip_preprocess, pixel_preprocess
from latent_clip.weights import load_weights
from latent_clip.zeroshot import open_clip_classifier

from .. import FitConfig, SafetensorsShard, expand_shards, fit as train_fit, write_tar
from .vae import encode
from .world import (CATEGORIES, COLOURS, PREFIXES, RELATIONS, SHAPES, Query, Sample, Spec, images_tensor, make_pair,
                    make_samples, noun_phrase)

CONTEXT = 20
EMBED, WIDTH = 64, 64


def clip_configs(heads: int = 1) -> tuple[dict, dict]:
    """The Latent-CLIP's and the pixel CLIP's open_clip configs, size-matched: 64 tokens + CLS in both image towers,
    width 64, 2 + 2 layers, ``heads`` attention heads in every layer (the full study's 4 learn shape and
    binding faster than one: docs/verifiers.md)."""
    if WIDTH % heads:
        raise ValueError(f"heads must divide the width {WIDTH}, got {heads}")
    text = {"context_length": CONTEXT, "width": WIDTH, "heads": heads, "layers": 2}
    vision = {"image_size": 64, "width": WIDTH, "layers": 2, "head_width": WIDTH // heads}
    return ({"embed_dim": EMBED, "text_cfg": text,
             "vision_cfg": {**vision, "patch_size": 1, "latent_family": "tinyworld", "latent_n_channels": 4,
                            "latent_factor": 8}},
            {"embed_dim": EMBED, "text_cfg": text, "vision_cfg": {**vision, "patch_size": 8}})


# ---------------------------------------------------------------- data

def write_image_shards(out: Path, seed: int, n: int, shard_size: int = 2000, pairs: bool = False) -> list[Path]:
    """World samples as img2dataset-style tars (``KEY.png`` + ``KEY.txt``). With ``pairs`` every sample comes with
    its twin (:func:`.world.make_pair`: the caption differs in one attribute) in the same shard; a shard of the
    batch's size is then one training batch (``python -m train fit`` reads a shard's rows together), so every
    batch holds its hard negatives."""
    out.mkdir(parents=True, exist_ok=True)
    if pairs and shard_size % 2:
        raise ValueError(f"a shard of twins needs an even size, got {shard_size}")
    paths = []
    for k, start in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - start)
        if pairs:
            samples = [s for i in range(start // 2, (start + count) // 2) for s in make_pair(seed, i)]
        else:
            samples = make_samples(seed, count, start=start)
        paths.append(out / f"{k:05d}.tar")
        write_tar(paths[-1], ((f"{start + i:08d}", {"png": png_bytes(s.image), "txt": s.caption.encode()})
                              for i, s in enumerate(samples)))
    return paths


def png_bytes(image: np.ndarray) -> bytes:
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue()


def read_latent_shards(directory: Path) -> tuple[torch.Tensor, list[str]]:
    rows = [shard[i] for shard in map(SafetensorsShard, expand_shards(directory)) for i in range(len(shard))]
    return torch.stack([r.latent for r in rows]), [r.caption for r in rows]


# ---------------------------------------------------------------- training

def fit(kind: str, cfg: dict, data: Path, out: Path, steps: int, batch: int, lr: float = 2e-3,
        grad_clip: float = 1.0, seed: int = 0) -> Path:
    """The trainer's :func:`train.fit`, as ``python -m train fit`` calls it; returns the final checkpoint.
    Warmup is a tenth of the steps and gradients are clipped: without both, the pixel CLIP at lr 5e-3
    collapsed to constant features (loss stuck at log(batch))."""
    shutil.rmtree(out / kind, ignore_errors=True)  # the study retrains from scratch; fit refuses to overwrite a run
    train_fit(FitConfig(model=cfg, model_kind=kind, train_data=data, batch_size=batch, micro_batch_size=batch,
                        max_steps=steps, lr=lr, warmup=max(1, steps // 10), grad_clip=grad_clip, wd=0.1,
                        precision="fp32", grad_checkpointing=False, workers=0, device="cpu", out_dir=out, name=kind,
                        log_every=max(1, steps // 5), save_every=steps, seed=seed))
    return out / kind / "checkpoints" / "epoch_latest.pt"


def load_latent_checkpoint(path: Path, cfg: dict):
    model = LatentCLIP(ModelConfig.from_dict(cfg, name="tinyworld-latent-clip"))
    return load_weights(model, path).eval().requires_grad_(False)


# ---------------------------------------------------------------- features

def text_features(model, texts: list[str]) -> torch.Tensor:
    tokens = open_clip.tokenize(texts, context_length=model.context_length)
    return torch.cat([F.normalize(model.encode_text(t), dim=-1) for t in tokens.split(256)])


def image_features(kind: str, model, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    if kind == "latent":
        return model.encode_latents(latents, normalize=True)
    preprocess = pixel_preprocess(model)  # the transform fit trained it with: 64 px, OpenAI mean/std
    return torch.cat([F.normalize(model.encode_image(clip_preprocess(x, *preprocess)), dim=-1)
                      for x in images.split(256)])


# ---------------------------------------------------------------- zero-shot

def candidates(spec: Spec) -> tuple[list[str], int]:
    """Captions that differ from the true one only in the attribute ``spec.category`` tests;
    the true caption's index. Chance is 1 / len(candidates)."""
    q = spec.queries
    if spec.category == "single_object":
        texts = [noun_phrase(Query(s)) for s in SHAPES]
    elif spec.category == "colors":
        texts = [noun_phrase(Query(q[0].shape, c)) for c in COLOURS]
    elif spec.category == "counting":
        texts = [noun_phrase(Query(q[0].shape, q[0].colour, n)) for n in (1, 2, 3, 4)]
    elif spec.category == "two_object":
        pairs = [p if set(p) != {q[0].shape, q[1].shape} else (q[0].shape, q[1].shape)
                 for p in itertools.combinations(SHAPES, 2)]
        texts = [f"{noun_phrase(Query(a))} and {noun_phrase(Query(b))}" for a, b in pairs]
    elif spec.category == "position":
        texts = [f"{noun_phrase(q[0])} {r} {noun_phrase(q[1])}" for r in RELATIONS]
    elif spec.category == "color_attr":
        swapped = Spec(spec.category, (Query(q[0].shape, q[1].colour), Query(q[1].shape, q[0].colour)))
        texts = [spec.phrase(), swapped.phrase()]
    else:
        raise ValueError(spec.category)
    return texts, texts.index(spec.phrase())


@dataclass
class HeldOut:
    samples: list[Sample]
    images: torch.Tensor     # [-1, 1]
    latents: torch.Tensor    # raw


def held_out(vae, seed: int, per_category: int) -> dict[str, HeldOut]:
    out = {}
    for k, category in enumerate(CATEGORIES):
        samples = make_samples(seed, per_category, category=category, start=k * 1_000_000, prefix=False)
        images = images_tensor(samples)
        out[category] = HeldOut(samples, images, encode(vae, images))
    return out


@torch.no_grad()
def zero_shot(kind: str, model, data: dict[str, HeldOut], prefix: str = PREFIXES[1]) -> dict[str, float]:
    """Top-1 accuracy per category, plus ``object``: 18-way "{colour} {shape}" classification of
    single-object images (an ImageNet-style class-name classifier over all templates), and
    ``mean`` over the six categories."""
    acc = {}
    for category, d in data.items():
        feats = image_features(kind, model, d.images, d.latents)
        hits = []
        for f, s in zip(feats, d.samples):
            texts, truth = candidates(s.spec)
            hits.append(int((text_features(model, [prefix + t for t in texts]) @ f).argmax()) == truth)
        acc[category] = float(np.mean(hits))
    acc["mean"] = float(np.mean([acc[c] for c in data]))
    d = data["colors"]
    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    templates = [p + "a {}" for p in PREFIXES]
    if kind == "latent":
        probs = classify(model, d.latents, build_classifier(model, classes, templates))
    else:
        weights = open_clip_classifier(model, classes, templates, "cpu")
        probs = image_features(kind, model, d.images, d.latents) @ weights
    truth = [classes.index(f"{s.spec.queries[0].colour} {s.spec.queries[0].shape}") for s in d.samples]
    acc["object"] = float((probs.argmax(-1) == torch.tensor(truth)).float().mean())
    return acc


CHANCE = {"single_object": 1 / 3, "colors": 1 / 6, "counting": 1 / 4, "two_object": 1 / 3, "position": 1 / 4,
          "color_attr": 1 / 2, "object": 1 / 18}
CHANCE["mean"] = float(np.mean([CHANCE[c] for c in CATEGORIES]))
