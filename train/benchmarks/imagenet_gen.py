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
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from latent_clip.files import atomic_write

from ..data import ImageTransform, folder_rows, write_latent_shard, write_sizes
from .generators import add_pipeline_args, generator_from_args
from .outputs import OutputTree
from .runner import Item, Rank, Setup, decode_pil, run


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


class ImagenetGenRun:
    """One rank's run: each chunk of images is VAE-encoded (real) and re-generated from its latent
    at ``--denoise`` with its class name as the prompt (gen); both stored as labelled latent shards."""

    def __init__(self, args, rows: list, folders: list[str], names: list[str]):
        self.args, self.rows, self.folders, self.names = args, rows, folders, names
        rank = Rank.from_env()
        device = rank.device(args.device)
        images = OutputTree(args.outdir, f"rank{rank.rank}") if args.save_images else None
        self.s = Setup(rank, device, generator_from_args(args, device, args.size), images)
        self.gen, self.out = self.s.gen, Path(args.outdir)
        self.transform = ImageTransform(args.size)
        self.steps = self.gen.timesteps(args.steps, args.denoise)

    @functools.cache
    def condition(self, label: int):
        """The class name's conditioning, encoded once per class."""
        prompt = self.args.prompt_template.format(self.names[label])
        return self.gen.condition(prompt, self.args.cfg, self.args.negative_prompt)

    def regenerate(self, batch: list, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, generated) raw latents of one batch of rows; image ``start + k`` uses seed + start + k."""
        args, gen = self.args, self.gen
        x = torch.stack([self.transform(Image.open(p).convert("RGB")) for p, _, _ in batch])
        with torch.no_grad():
            z = gen.encode(x)
            noise = gen.noise([args.seed + start + k for k in range(len(batch))])
            outs = []
            for k, (_, _, label) in enumerate(batch):   # one prompt per image (class-conditioned)
                x_t = gen.start(noise[k:k + 1], self.steps, gen.to_scaled(z[k:k + 1]))
                outs.append(gen.to_raw(gen.sample(x_t, self.steps, self.condition(label), args.cfg)))
        return z, torch.cat(outs)

    def process(self, item: Item) -> list[dict]:
        args, names, start = self.args, self.names, item.meta["start"]
        chunk = self.rows[start:start + args.chunk]
        real, fake = [], []
        for b in range(0, len(chunk), args.batch_size):
            batch = chunk[b:b + args.batch_size]
            z, generated = self.regenerate(batch, start + b)
            real.append(z.cpu())
            fake.append(generated.cpu())
            if self.s.out is not None:
                for (p, _, label), image in zip(batch, decode_pil(self.gen, generated)):
                    self.s.out.save_png(f"images/{self.folders[label]}/{p.stem}.png", image)
        keys = [p.relative_to(args.data).with_suffix("").as_posix() for p, _, _ in chunk]
        labels = [label for _, _, label in chunk]
        captions = [names[label] for label in labels]
        write_latent_shard(self.out / "real" / f"real_{item.key}.safetensors", torch.cat(real), captions, keys, labels)
        write_latent_shard(self.out / "gen" / f"gen_{item.key}.safetensors", torch.cat(fake), captions, keys, labels)
        return [{"item": item.index, "sample": k, "key": key, "label": label, "class": names[label]}
                for k, (key, label) in enumerate(zip(keys, labels))]


def main(argv: Sequence[str] | None = None) -> dict:
    from ..evaluate import load_classnames

    args = parse_args(argv)
    rows, folders = folder_rows(args.data, labels_from_folders=True)
    rows = rows[:args.limit]
    names = load_classnames(args.classnames, args.data)  # train eval's class names, one per class folder
    if len(names) != len(folders):
        raise ValueError(f"--classnames {args.classnames or '(the folder names)'} gives {len(names)} names for "
                         f"{len(folders)} class folders in {args.data}")
    job = ImagenetGenRun(args, rows, folders, names)
    device, out = job.s.device, job.out
    items = [Item(c, f"{c:05d}", "", {"start": s}) for c, s in enumerate(range(0, len(rows), args.chunk))]
    summary = run("imagenet-gen", items, job.process, job.s, args)
    if job.s.rank.rank != 0:
        return {}
    for split in ("real", "gen"):
        (out / split).mkdir(parents=True, exist_ok=True)
        write_sizes(out / split)
        atomic_write(out / split / "classnames.txt", lambda t: t.write_text("\n".join(names) + "\n"))
    result = {"summary": summary}
    if args.model:
        result["zeroshot"] = zeroshot_both(args, out, device)
        (out / "zeroshot.json").write_text(json.dumps(result["zeroshot"], indent=2))
    return result


def zeroshot_both(args, out: Path, device: torch.device) -> dict:
    """``train eval zeroshot`` on the stored real and generated latents (same crops, same labels)."""
    from ..evaluate import main as evaluate

    results = {}
    for split in ("real", "gen"):
        argv = ["zeroshot", "--data", str(out / split), "--model", args.model, "--templates", args.templates,
                "--batch-size", str(args.eval_batch_size), "--device", str(device),
                *(["--config", args.config] if args.config else [])]
        print(f"zero-shot on {split}:", flush=True)
        results[split] = evaluate(argv)["latent"]
    print(f"generated-ImageNet top-1 {100 * results['gen']['top1']:.2f} vs real {100 * results['real']['top1']:.2f}")
    return results
