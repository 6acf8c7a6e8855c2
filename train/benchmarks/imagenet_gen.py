"""The paper's "generated ImageNet": each real val image is VAE-encoded, noised to 66 % and
re-denoised by a one-step model conditioned on its class name; then zero-shot on both sets.

Defaults follow the Latent-CLIP demo's ComfyUI workflow (SDXL-Turbo, 512 px centre crop,
2 steps at denoise 0.66, cfg 1.1, negative "text, watermark"); the sampler here is deterministic
Euler over the scheduler's own spacing, not ComfyUI's euler_ancestral + "normal".

    <outdir>/real/real_<chunk>.safetensors   raw latents of the real crops (+ labels, keys)
    <outdir>/gen/gen_<chunk>.safetensors     raw latents after re-denoising
    <outdir>/{real,gen}/classnames.txt, sizes.json   what `train eval zeroshot --data` reads
    <outdir>/images/<class folder>/<stem>.png    decoded generated images (--save-images)
    <outdir>/zeroshot.json                       real vs generated top-1/top-5 (--model)
"""
from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from latent_clip.files import atomic_write

from .. import DistEnv, ImageTransform, folder_rows, write_latent_shard, write_sizes
from .generators import GeneratorSettings, add_pipeline_args, load_generator
from .outputs import OutputTree
from .runner import Item, RankResources, decode_pil, run
from .settings import settings_from


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train bench imagenet-gen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageNet-style folder (one sub-folder per class)")
    add_pipeline_args(p)
    p.add_argument("--outdir", required=True)
    p.add_argument("--classnames", help="'imagenet' (open_clip's names, folders sorted as wnids) or a file; "
                                        "default: folder names")
    p.add_argument("--prompt-template", default="{}", help="conditioning prompt for a class name")
    for flag, default in (("--size", 512), ("--steps", 2), ("--denoise", 0.66), ("--cfg", 1.1)):
        p.add_argument(flag, type=type(default), default=default)  # the demo workflow's (px, steps, denoise, CFG)
    p.add_argument("--negative-prompt", default="text, watermark")
    p.add_argument("--seed", type=int, default=0, help="image i's noise uses seed + i")
    p.add_argument("--chunk", type=int, default=256, help="images per shard (the resume unit)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--save-images", action="store_true")
    p.add_argument("--summary-wait", type=float, default=600.0)
    e = p.add_argument_group("zero-shot on real and generated (train eval zeroshot)")
    e.add_argument("--model", help="Latent-CLIP weights; without it only the latents are written")
    e.add_argument("--config", help="Latent-CLIP config when the weights do not say")
    e.add_argument("--templates", default="openai")
    e.add_argument("--eval-batch-size", type=int, default=64)
    return p.parse_args(argv)


@dataclass(frozen=True)
class ZeroshotSettings:
    """The zero-shot group of :func:`parse_args`: ``train eval zeroshot`` on real and generated latents."""

    model: str | None                   # Latent-CLIP weights; None: only the latents are written
    config: str | None
    templates: str
    eval_batch_size: int


@dataclass(frozen=True)
class ImagenetGenSettings:
    """``bench imagenet-gen``'s options (:func:`parse_args`, defaults there), typed."""

    data: str                           # ImageNet-style folder (one sub-folder per class)
    generator: GeneratorSettings
    outdir: str
    classnames: str | None
    prompt_template: str
    size: int                           # px of the centre crop, and of the generation
    steps: int
    denoise: float
    cfg: float
    negative_prompt: str
    seed: int                           # image i's noise uses seed + i
    chunk: int                          # images per shard (the resume unit)
    batch_size: int
    limit: int | None
    save_images: bool
    summary_wait: float
    zeroshot: ZeroshotSettings


class ImagenetGenRun:
    """One rank's run: each chunk of images is VAE-encoded (real) and re-generated from its latent
    at ``--denoise`` with its class name as the prompt (gen); both stored as labelled latent shards."""

    def __init__(self, settings: ImagenetGenSettings, rows: list, folders: list[str], names: list[str]):
        self.settings, self.rows, self.folders, self.names = settings, rows, folders, names
        dist_env = DistEnv.from_env(settings.generator.device)
        images = OutputTree(settings.outdir, f"rank{dist_env.rank}") if settings.save_images else None
        generator = load_generator(settings.generator, dist_env.device, settings.size)
        self.resources = RankResources(dist_env, generator, images)
        self.generator, self.outdir = generator, Path(settings.outdir)
        self.transform = ImageTransform(settings.size)
        self.steps = generator.timesteps(settings.steps, settings.denoise)

    @functools.cache
    def condition(self, label: int):
        """The class name's conditioning, encoded once per class."""
        prompt = self.settings.prompt_template.format(self.names[label])
        return self.generator.condition(prompt, self.settings.cfg, self.settings.negative_prompt)

    def regenerate(self, batch: list, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, generated) raw latents of one batch of rows; image ``start + k`` uses seed + start + k."""
        settings, generator = self.settings, self.generator
        x = torch.stack([self.transform(Image.open(p).convert("RGB")) for p, _, _ in batch])
        with torch.no_grad():
            z = generator.encode(x)
            noise = generator.noise([settings.seed + start + k for k in range(len(batch))])
            outs = []
            for k, (_, _, label) in enumerate(batch):   # one prompt per image (class-conditioned)
                x_t = generator.start(noise[k:k + 1], self.steps, generator.to_scaled(z[k:k + 1]))
                outs.append(generator.to_raw(generator.sample(x_t, self.steps, self.condition(label), settings.cfg)))
        return z, torch.cat(outs)

    def process(self, item: Item) -> list[dict]:
        settings, names, start = self.settings, self.names, item.meta["start"]
        chunk = self.rows[start:start + settings.chunk]
        real, fake = [], []
        for b in range(0, len(chunk), settings.batch_size):
            batch = chunk[b:b + settings.batch_size]
            z, generated = self.regenerate(batch, start + b)
            real.append(z.cpu())
            fake.append(generated.cpu())
            if self.resources.images is not None:
                for (p, _, label), image in zip(batch, decode_pil(self.generator, generated)):
                    self.resources.images.save_png(f"images/{self.folders[label]}/{p.stem}.png", image)
        keys = [p.relative_to(settings.data).with_suffix("").as_posix() for p, _, _ in chunk]
        labels = [label for _, _, label in chunk]
        captions = [names[label] for label in labels]
        for split, latents in (("real", real), ("gen", fake)):
            write_latent_shard(self.outdir / split / f"{split}_{item.key}.safetensors", torch.cat(latents), captions,
                               keys, labels)
        return [{"item": item.index, "sample": k, "key": key, "label": label, "class": names[label]}
                for k, (key, label) in enumerate(zip(keys, labels))]


def main(argv: Sequence[str] | None = None) -> dict:
    from .. import load_classnames

    settings = settings_from(ImagenetGenSettings, parse_args(argv))
    rows, folders = folder_rows(settings.data, labels_from_folders=True)
    rows = rows[:settings.limit]
    names = load_classnames(settings.classnames, settings.data)  # train eval's class names, one per class folder
    if len(names) != len(folders):
        raise ValueError(f"--classnames {settings.classnames or '(the folder names)'} gives {len(names)} names for "
                         f"{len(folders)} class folders in {settings.data}")
    job = ImagenetGenRun(settings, rows, folders, names)
    dist_env, out = job.resources.dist_env, job.outdir
    items = [Item(c, f"{c:05d}", "", {"start": first})
             for c, first in enumerate(range(0, len(rows), settings.chunk))]
    summary = run("imagenet-gen", items, job.process, job.resources, settings.outdir, settings.summary_wait)
    if dist_env.rank != 0:
        return {}
    for split in ("real", "gen"):
        (out / split).mkdir(parents=True, exist_ok=True)
        write_sizes(out / split)
        atomic_write(out / split / "classnames.txt", lambda t: t.write_text("\n".join(names) + "\n"))
    result = {"summary": summary}
    if settings.zeroshot.model:
        result["zeroshot"] = zeroshot_both(settings.zeroshot, out, dist_env.device)
        (out / "zeroshot.json").write_text(json.dumps(result["zeroshot"], indent=2))
    return result


def zeroshot_both(settings: ZeroshotSettings, out: Path, device: torch.device) -> dict:
    """``train eval zeroshot`` on the stored real and generated latents (same crops, same labels)."""
    from .. import eval_command as evaluate

    results = {}
    for split in ("real", "gen"):
        argv = ["zeroshot", "--data", str(out / split), "--model", settings.model, "--templates", settings.templates,
                "--batch-size", str(settings.eval_batch_size), "--device", str(device),
                *(["--config", settings.config] if settings.config else [])]
        print(f"zero-shot on {split}:", flush=True)
        results[split] = evaluate(argv)["latent"]
    print(f"generated-ImageNet top-1 {100 * results['gen']['top1']:.2f} vs real {100 * results['real']['top1']:.2f}")
    return results
