"""Datasets: image-caption shards in, latent shards out, and a deterministic batch stream for ``fit``.

Shard formats (one sample = one row):

* ``wds``: webdataset tar. Latent shards use the authors' ``webdataset-latent`` layout: ``KEY.latent.pt``
  (``torch.save`` of a raw (C, H, W) latent) + ``KEY.txt`` [+ ``KEY.cls``]. Image shards are img2dataset
  tars: ``KEY.jpg``/``KEY.png``/``KEY.webp`` + ``KEY.txt`` [+ ``KEY.cls``].
* ``safetensors``: our tensor-native latent shard: one file, tensor ``latents`` (N, C, H, W) and
  JSON lists ``captions`` / ``keys`` / ``labels`` in the header metadata.
* image folders: files + captions (``captions.jsonl`` / ``captions.csv`` / ``stem.txt`` beside each
  image), or ImageNet style (one sub-folder per class) for evaluation.

The batch stream maps a global sample position to (shard, row) through per-epoch seeded
permutations, so batch ``k`` is a pure function of (seed, k): resuming at step ``k`` replays the
exact data order without reading what came before.
"""
from __future__ import annotations

import bisect
import csv
import glob
import io
import json
import random
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import IterableDataset, get_worker_info

from latent_clip.factory import atomic_write

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHARD_EXTS = (".tar", ".safetensors")
SIZES_FILE = "sizes.json"
CAPTION_FILES = ("captions.jsonl", "captions.csv")


@dataclass
class Sample:
    key: str
    caption: str = ""
    label: int = -1
    latent: torch.Tensor | None = None
    image_bytes: bytes | None = None
    image_path: Path | None = None

    def image(self) -> Image.Image:
        """The RGB image; raises on corrupt data (callers count and skip)."""
        src = io.BytesIO(self.image_bytes) if self.image_bytes is not None else self.image_path
        with Image.open(src) as img:
            return img.convert("RGB")


# ---------------------------------------------------------------- listing and reading shards

def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """A directory (its ``*.tar``/``*.safetensors``), a glob, a brace pattern (``{000..099}.tar``),
    or a ``::``-separated / list of those -> sorted shard paths."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    spec = str(spec)
    if "::" in spec:
        return expand_shards(spec.split("::"))
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in SHARD_EXTS)
    from braceexpand import braceexpand
    paths = [Path(q) for p in braceexpand(spec) for q in (sorted(glob.glob(p)) or [p])]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shards not found: {', '.join(map(str, missing[:3]))}")
    return paths


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything before the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


class TarShard:
    """All samples of one webdataset tar, in file order; decoding happens per row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        groups: dict[str, dict[str, bytes]] = {}
        with tarfile.open(self.path, "r:") as tar:
            for member in tar:
                if member.isfile():
                    key, ext = _split_key(member.name)
                    groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
        self.keys = list(groups)
        self.groups = groups

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        key = self.keys[i]
        g = self.groups[key]
        caption = g.get("txt", b"").decode("utf-8", "replace")
        label = int(g["cls"].decode()) if "cls" in g else -1
        if "latent.pt" in g:
            latent = torch.load(io.BytesIO(g["latent.pt"]), map_location="cpu", weights_only=True).float()
            return Sample(key, caption, label, latent=latent)
        image = next((g[e] for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in g), None)
        return Sample(key, caption, label, image_bytes=image)


class SafetensorsShard:
    """Our tensor-native latent shard; rows are read lazily from the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt", device="cpu")
        meta = self._file.metadata() or {}
        self.captions = json.loads(meta.get("captions", "[]"))
        self.keys = json.loads(meta.get("keys", "[]")) or [str(i) for i in range(len(self.captions))]
        self.labels = json.loads(meta.get("labels", "[]"))
        self._latents = self._file.get_slice("latents")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        latent = self._latents[i:i + 1][0].float()
        label = self.labels[i] if self.labels else -1
        return Sample(self.keys[i], self.captions[i] if self.captions else "", label, latent=latent)


class FolderShard:
    """A chunk of an image folder: rows of (path, caption, label)."""

    def __init__(self, rows: Sequence[tuple[Path, str, int]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        path, caption, label = self.rows[i]
        return Sample(path.stem, caption, label, image_path=path)


def open_shard(path: Path):
    return SafetensorsShard(path) if Path(path).suffix == ".safetensors" else TarShard(path)


def shard_len(path: Path) -> int:
    path = Path(path)
    sizes = path.parent / SIZES_FILE
    if sizes.is_file():
        known = json.loads(sizes.read_text())
        if path.name in known:
            return int(known[path.name])
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.get_slice("latents").get_shape()[0]
    with tarfile.open(path, "r:") as tar:
        return len({_split_key(m.name)[0] for m in tar if m.isfile()})


def write_sizes(directory: Path) -> dict[str, int]:
    """``sizes.json`` (shard name -> rows), as webdataset's wids uses, so readers skip the scan."""
    directory = Path(directory)
    sizes = {p.name: shard_len_scan(p) for p in expand_shards(directory)}
    atomic_write(directory / SIZES_FILE, lambda tmp: tmp.write_text(json.dumps(sizes, indent=1)))
    return sizes


def shard_len_scan(path: Path) -> int:
    if Path(path).suffix == ".safetensors":
        return shard_len(path)
    with tarfile.open(path, "r:") as tar:
        return len({_split_key(m.name)[0] for m in tar if m.isfile()})


# ---------------------------------------------------------------- image folders

def _read_captions(folder: Path, captions: Path | None) -> dict[str, str]:
    if captions is None:
        captions = next((folder / n for n in CAPTION_FILES if (folder / n).is_file()), None)
    if captions is None:
        return {}
    if captions.suffix == ".jsonl":
        rows = [json.loads(line) for line in captions.read_text().splitlines() if line.strip()]
    else:
        with open(captions, newline="") as f:
            rows = list(csv.DictReader(f))
    def pick(row, *names):
        return next(row[n] for n in names if n in row)
    return {str(pick(r, "file", "image", "filepath", "path")): str(pick(r, "caption", "text", "title"))
            for r in rows}


def folder_rows(folder: str | Path, captions: str | Path | None = None,
                labels_from_folders: bool = False) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """Rows (path, caption, label) of an image folder, sorted; and the class names (sub-folders)
    when ``labels_from_folders`` (ImageNet style; the caption is then the class name)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if labels_from_folders:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        return [(p, p.parent.name.replace("_", " "), index[p.parent.name]) for p in files
                if p.parent.name in index], classes
    table = _read_captions(folder, Path(captions) if captions else None)
    rows = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        txt = p.with_suffix(".txt")
        caption = table.get(rel, table.get(p.name))
        if caption is None and txt.is_file():
            caption = txt.read_text().strip()
        if caption is not None:
            rows.append((p, caption, -1))
    return rows, []


# ---------------------------------------------------------------- pixel preprocessing

class ImageTransform:
    """Resize the shorter side to ``size`` (bicubic, antialiased), centre-crop, normalise:
    the paper's / open_clip's validation transform. mean = std = 0.5 gives [-1, 1] for VAEs."""

    def __init__(self, size: int, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3):
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF
        x = TF.pil_to_tensor(img)
        x = TF.resize(x, self.size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [self.size, self.size]).float().div_(255).clamp_(0, 1)
        return (x - self.mean) / self.std


# ---------------------------------------------------------------- writing

def write_latent_shard(path: Path, latents: torch.Tensor, captions: Sequence[str], keys: Sequence[str],
                       labels: Sequence[int] | None = None) -> None:
    """Atomically write one latent shard; the format follows the suffix (.tar or .safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels is not None and any(l >= 0 for l in labels) else None
    if path.suffix == ".safetensors":
        meta = {"captions": json.dumps(list(captions)), "keys": json.dumps(list(keys))}
        if labels:
            meta["labels"] = json.dumps(labels)
        atomic_write(path, lambda tmp: save_file({"latents": latents.contiguous()}, str(tmp), metadata=meta))
        return

    def write_tar(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            for i, (key, caption) in enumerate(zip(keys, captions)):
                buf = io.BytesIO()
                torch.save(latents[i].clone(), buf)
                files = {"latent.pt": buf.getvalue(), "txt": caption.encode()}
                if labels:
                    files["cls"] = str(labels[i]).encode()
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    atomic_write(path, write_tar)


# ---------------------------------------------------------------- deterministic stream

class SampleStream:
    """Global sample position -> (shard, row). Epoch ``e`` visits the shards in a seeded
    permutation and each shard's rows in a seeded permutation; positions past the end wrap
    into the next epoch."""

    def __init__(self, sizes: Sequence[int], seed: int = 0, shuffle: bool = True):
        if not sizes or sum(sizes) == 0:
            raise ValueError("the dataset is empty")
        self.sizes, self.seed, self.shuffle = list(sizes), seed, shuffle
        self.total = sum(self.sizes)

    @lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> tuple[list[int], list[int]]:
        order = list(range(len(self.sizes)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        starts, acc = [], 0
        for s in order:
            starts.append(acc)
            acc += self.sizes[s]
        return order, starts

    @lru_cache(maxsize=64)
    def _rows(self, epoch: int, shard: int) -> list[int]:
        rows = list(range(self.sizes[shard]))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}/{shard}").shuffle(rows)
        return rows

    def locate(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.total)
        order, starts = self._epoch(epoch)
        i = bisect.bisect_right(starts, offset) - 1
        return order[i], self._rows(epoch, order[i])[offset - starts[i]]


@dataclass(frozen=True)
class BatchPlan:
    """Which rows of the stream a rank reads. ``split="rows"``: every rank reads its slice of the
    same global batch (exactly what one process would see; DDP == single process).
    ``split="shards"``: rank r streams only shards i % world == r (open_clip's way; less I/O)."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0
    split: str = "rows"

    @property
    def accum(self) -> int:
        per_step = self.micro_batch * self.world_size
        if self.global_batch % per_step:
            raise ValueError(f"global batch {self.global_batch} is not a multiple of micro batch "
                             f"{self.micro_batch} x world size {self.world_size}")
        return self.global_batch // per_step

    def positions(self, step: int, micro: int) -> range:
        mb = self.micro_batch
        if self.split == "rows":
            start = step * self.global_batch + (micro * self.world_size + self.rank) * mb
        elif self.split == "shards":
            start = (step * self.accum + micro) * mb
        else:
            raise ValueError(f"split must be 'rows' or 'shards', got {self.split!r}")
        return range(start, start + mb)

    def my_shards(self, shards: Sequence[Path]) -> list[Path]:
        if self.split == "shards":
            mine = list(shards)[self.rank::self.world_size]
            if not mine:
                raise ValueError(f"{len(shards)} shards cannot be split over {self.world_size} ranks")
            return mine
        return list(shards)


class TrainBatches(IterableDataset):
    """Micro-batches ``(inputs, captions)`` for steps ``start_step, start_step+1, ...`` in order.
    Inputs are stacked latents, or images through ``transform`` for a pixel model. With DataLoader
    workers, worker w builds micro-batches k with k % workers == w (the loader interleaves them
    back in order), so the order never depends on the number of workers."""

    def __init__(self, shards: Sequence[Path], plan: BatchPlan, seed: int, start_step: int = 0,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None):
        self.shards = plan.my_shards(shards)
        self.stream = SampleStream([shard_len(p) for p in self.shards], seed=seed)
        self.plan, self.start_step, self.transform = plan, start_step, transform
        self._open: dict[int, object] = {}

    def _sample(self, position: int) -> Sample:
        shard, row = self.stream.locate(position)
        if shard not in self._open:
            if len(self._open) >= 2:
                self._open.pop(next(iter(self._open)))
            self._open[shard] = open_shard(self.shards[shard])
        return self._open[shard][row]

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, list[str]]:
        samples = [self._sample(p) for p in self.plan.positions(step, micro)]
        if self.transform is None:
            inputs = torch.stack([s.latent for s in samples])
        else:
            inputs = torch.stack([self.transform(s.image()) for s in samples])
        return inputs, [s.caption for s in samples]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        step, k = self.start_step, 0
        while True:
            for micro in range(self.plan.accum):
                if k % workers == worker:
                    yield self.batch(step, micro)
                k += 1
            step += 1
