"""A learnable synthetic latent-caption dataset for smoke runs, tests and benches: class k has a
random prototype latent; a sample is its prototype plus noise, captioned with the class name."""
from __future__ import annotations

from pathlib import Path

import torch

from train.data import IMAGE_EXTS, write_latent_shard, write_sizes, write_tar

NAMES = ("apple", "boat", "castle", "dog", "engine", "forest", "guitar", "house", "island", "jacket",
         "kite", "lamp", "mountain", "needle", "orange", "piano")


def tiny_latent_cfg(image_size: int = 128, layers: int = 2, patch_size: int = 8, family: str = "sdxl") -> dict:
    """The smallest Latent-CLIP config that still exercises every code path (tests, smoke runs,
    benches): ``image_size`` in pixels of the 4-channel, 8x-downscaling ``family``; ``layers`` per tower."""
    return {"embed_dim": 32, "vision_cfg": {"image_size": image_size, "layers": layers, "width": 64,
                                            "patch_size": patch_size, "latent_family": family,
                                            "latent_n_channels": 4, "latent_factor": 8},
            "text_cfg": {"width": 64, "heads": 1, "layers": layers}}


def tiny_pixel_cfg(image_size: int = 64, layers: int = 2, text_width: int = 64) -> dict:
    """The smallest pixel open_clip CLIP config, as :func:`tiny_latent_cfg`."""
    return {"embed_dim": 32, "vision_cfg": {"image_size": image_size, "layers": layers, "width": 64, "patch_size": 16},
            "text_cfg": {"width": text_width, "heads": 1, "layers": layers}}


TINY_LATENT_CFG, TINY_PIXEL_CFG = tiny_latent_cfg(), tiny_pixel_cfg()


def write_synthetic_latents(out: str | Path, n_classes: int = 4, per_class: int = 16, shape=(4, 16, 16),
                            n_shards: int = 2, fmt: str = "safetensors", seed: int = 0) -> Path:
    out = Path(out)
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((n_classes, *shape), generator=g) * 3
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    latents = prototypes[labels] + 1.5 * torch.randn((len(labels), *shape), generator=g)
    names = [NAMES[k % len(NAMES)] + ("" if k < len(NAMES) else str(k)) for k in range(n_classes)]
    suffix = ".safetensors" if fmt == "safetensors" else ".tar"
    for s, idx in enumerate(torch.arange(len(labels)).chunk(n_shards)):
        write_latent_shard(out / f"{s:06d}{suffix}", latents[idx],
                           [f"a photo of a {names[labels[i]]}" for i in idx],
                           [f"{s:03d}{int(i):06d}" for i in idx], [int(labels[i]) for i in idx])
    write_sizes(out)
    (out / "classnames.txt").write_text("\n".join(names) + "\n")
    return out


def write_image_shards(images: str | Path, out: str | Path, n_shards: int = 2, corrupt: int = 0) -> list[Path]:
    """img2dataset-style tars (``KEY.png``/``KEY.jpg`` + ``KEY.txt``) from a folder of images, with
    generated captions ("a photo of a <file stem>") and ``corrupt`` undecodable images appended."""
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        members = [(f"{s:03d}{i:04d}", {p.suffix.lower().lstrip("."): p.read_bytes(),
                                        "txt": f"a photo of a {p.stem.replace('_', ' ')}".encode()})
                   for i, p in enumerate(files[s::n_shards])]
        if s == 0:
            members += [(f"bad{j:04d}", {"jpg": b"not an image", "txt": b"broken"}) for j in range(corrupt)]
        paths.append(out / f"{s:05d}.tar")
        write_tar(paths[-1], members)
    return paths
