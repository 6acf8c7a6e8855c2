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
import itertools
import json
import random
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import IterableDataset, get_worker_info

from latent_clip.files import atomic_write
from latent_clip.weights import CheckpointError, load_pickle_safely
from latent_clip.fields import check_texts, shorten
from latent_clip.filebounds import FileLimitError, check_safetensors_header, read_bounded

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHARD_EXTS = (".tar", ".safetensors")
SIZES_FILE = "sizes.json"
CAPTION_FILES = ("captions.jsonl", "captions.csv")
# Pixels of one input image: 8192 x 8192 (67 M) is far above the 512 px the models train on and below PIL's own
# bomb limit (89 M pixels: a warning; 179 M: an error). A 13000 x 13000 PNG cost 73 s and 2.5 GB to decode.
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_CAPTION_BYTES = 1 << 16             # a caption .txt: CLIP reads 77 tokens (about 300 characters)
MAX_CAPTION_TABLE_BYTES = 1 << 30       # captions.jsonl / .csv: 1 GB is 10 M rows of 100 bytes
MAX_SIZES_BYTES = 1 << 24               # sizes.json: 16 MB is 500,000 shard names
SHARD_TENSORS = 16                      # a safetensors shard holds one tensor, "latents"


class ImageTooLarge(ValueError):
    """An image whose header asks for more than :data:`MAX_IMAGE_PIXELS` pixels (nothing decoded)."""


@dataclass
class Sample:
    key: str
    caption: str = ""
    label: int = -1
    latent: torch.Tensor | None = None
    image_bytes: bytes | None = None
    image_path: Path | None = None

    def image(self) -> Image.Image:
        """The RGB image; raises on corrupt data or :class:`ImageTooLarge` (read from the header, before
        decoding) on more than :data:`MAX_IMAGE_PIXELS` pixels (callers count and skip)."""
        src = io.BytesIO(self.image_bytes) if self.image_bytes is not None else self.image_path
        with Image.open(src) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(f"{img.width}x{img.height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                    f"allowed (8192x8192)")
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


class ShardError(ValueError):
    """A shard, or a row of one, cannot be read: truncated, corrupt or not in the expected format."""


class CaptionError(ShardError):
    """A row's caption (or label) is not UTF-8 text."""


MAX_MEMBER_BYTES = 1 << 28  # one file inside a tar shard (an image, a latent, a caption)


class TarShard:
    """All samples of one webdataset tar, in file order; decoding happens per row. A truncated or
    corrupt tar raises :class:`ShardError` when opened, a corrupt row when read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        groups: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(self.path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    if member.size > MAX_MEMBER_BYTES:
                        raise ShardError(f"{self.path}: member {member.name} is {member.size:,} bytes, more than "
                                         f"{MAX_MEMBER_BYTES:,}")
                    key, ext = _split_key(member.name)
                    groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ShardError(f"{self.path}: truncated or corrupt tar ({err})") from None
        self.keys = list(groups)
        self.groups = groups

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        key = self.keys[i]
        g = self.groups[key]
        try:
            caption = check_texts(g.get("txt", b"").decode("utf-8"), "caption")[0]
            label = int(g["cls"].decode()) if "cls" in g else -1
        except ValueError as err:  # not UTF-8, a label that is not a number, a caption over the text bounds
            raise CaptionError(f"{shorten(self.path)} sample {shorten(key, 60)}: caption or label is not UTF-8 "
                               f"text within the bounds ({shorten(str(err), 120)})") from None
        if "latent.pt" in g:
            return Sample(key, caption, label, latent=_read_latent(g["latent.pt"], f"{self.path} sample {key}"))
        image = next((g[e[1:]] for e in IMAGE_EXTS if e[1:] in g), None)
        return Sample(key, caption, label, image_bytes=image)


def _read_latent(data: bytes, where: str) -> torch.Tensor:
    """A ``latent.pt`` member: a dense float tensor no larger than its bytes, read by the bounded loader
    (:func:`latent_clip.weights.load_pickle_safely`: tensors and plain data only, zip directory checked)."""
    try:
        latent = load_pickle_safely(data, f"{where}: latent.pt")
    except CheckpointError as err:  # any unreadable member is one corrupt row
        raise ShardError(str(err)) from None
    if (not isinstance(latent, torch.Tensor) or not latent.is_floating_point() or latent.layout != torch.strided
            or latent.numel() * latent.element_size() > len(data)):
        raise ShardError(f"{where}: latent.pt is not a dense float tensor stored in the file")
    return latent.float()


class SafetensorsShard:
    """Our tensor-native latent shard; rows are read lazily from the file. A truncated file or
    inconsistent metadata raises :class:`ShardError` when opened."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            check_safetensors_header(self.path, max_tensors=SHARD_TENSORS)
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
            meta = self._file.metadata() or {}
            self._latents = self._file.get_slice("latents")
            self.captions = json.loads(meta.get("captions", "[]"))
            self.keys = json.loads(meta.get("keys", "[]"))
            self.labels = json.loads(meta.get("labels", "[]"))
        except FileLimitError as err:
            raise ShardError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - safetensors raises its own untyped errors
            raise ShardError(f"{shorten(self.path)}: truncated or corrupt safetensors shard "
                             f"({shorten(str(err), 120)})") from None
        shape = self._latents.get_shape()
        self.rows = shape[0] if len(shape) == 4 else -1
        lists = {"captions": self.captions, "keys": self.keys, "labels": self.labels}
        bad = {k: len(v) if isinstance(v, list) else type(v).__name__ for k, v in lists.items()
               if not isinstance(v, list) or len(v) not in (0, self.rows)}
        if self.rows < 0 or bad:
            raise ShardError(f"{self.path}: latents {shape} and metadata {bad} do not describe the same "
                             f"(N, C, H, W) rows")
        self.keys = self.keys or [str(i) for i in range(self.rows)]

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int) -> Sample:
        latent = self._latents[i:i + 1][0].float()
        label = self.labels[i] if self.labels else -1
        caption = str(self.captions[i]) if self.captions else ""
        try:
            check_texts(caption, "caption")
        except ValueError as err:
            raise CaptionError(f"{shorten(self.path)} sample {shorten(self.keys[i], 60)}: {err}") from None
        return Sample(str(self.keys[i]), caption, int(label), latent=latent)


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
    """Rows of one shard, from its header (safetensors) or by scanning the member names (tar);
    raises :class:`ShardError` on a truncated or corrupt shard."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return len(SafetensorsShard(path))
    try:
        with tarfile.open(path, "r:") as tar:
            return len({_split_key(m.name)[0] for m in tar if m.isfile()})
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(f"{path}: truncated or corrupt tar ({err})") from None


@dataclass(frozen=True)
class Problem:
    """Bad data met and skipped: ``kind`` is ``corrupt_shard`` (counted once per shard),
    ``stale_size`` (a size cache disagreeing with a shard, once per shard), ``skipped_sample`` (a row
    that could not be read) or ``bad_caption`` (a caption that is not UTF-8, a caption-file line that
    does not parse), counted per row; ``where`` names the file (and row)."""

    kind: str
    where: str
    detail: str


class ProblemLog:
    """What bad data a job met and skipped: counted (shard problems once per shard, row problems per
    row) and printed (each shard problem, the first :attr:`shown` row problems). ``state()`` goes into
    checkpoints so that a resumed run keeps counting."""

    SHARD_KINDS = ("corrupt_shard", "stale_size")
    ROW_KINDS = ("skipped_sample", "bad_caption", "missing_caption")
    shown = 10

    def __init__(self, state: dict | None = None, prefix: str = "warning"):
        state = state or {}
        self.shards = {k: set(state.get(k, ())) for k in self.SHARD_KINDS}
        self.rows = {k: int(state.get(k, 0)) for k in self.ROW_KINDS}
        self.prefix, self.printed = prefix, 0

    def add(self, problems: Sequence[Problem]) -> bool:
        """Count ``problems``; True when a count changed."""
        changed = False
        for p in problems:
            if p.kind in self.shards:
                if p.where in self.shards[p.kind]:
                    continue
                self.shards[p.kind].add(p.where)
                self._print(p)
            else:
                self.rows[p.kind] += 1
                self.printed += 1
                if self.printed <= self.shown:
                    self._print(p, " (further ones are counted, not printed)" if self.printed == self.shown else "")
            changed = True
        return changed

    def _print(self, p: Problem, suffix: str = "") -> None:
        where = "" if p.where in p.detail else f"{p.where}: "
        print(f"{self.prefix}: {p.kind.replace('_', ' ')}: {where}{p.detail}{suffix}", flush=True)

    def counts(self) -> dict[str, int]:
        """``corrupt_shards``, ``stale_sizes``, ``skipped_samples``, ``bad_captions``, ``missing_captions``."""
        return {**{k + "s": len(v) for k, v in self.shards.items()}, **{k + "s": v for k, v in self.rows.items()}}

    def state(self) -> dict:
        return {**{k: sorted(v) for k, v in self.shards.items()}, **self.rows}


TAR_BLOCK = 512  # every member of a tar takes at least one header block, so a row takes at least this


def shard_sizes(shards: Sequence[Path]) -> tuple[list[int], list[Problem]]:
    """Rows per shard. A safetensors shard's header says (cheap), checked against the ``sizes.json``
    beside it; a tar's row count comes from that cache when it lists the shard with a count the file
    can hold (at most a row per 512 bytes), else from a scan. A cache that disagrees is a
    ``stale_size`` problem; an unreadable shard has 0 rows and a ``corrupt_shard`` problem."""
    caches: dict[Path, dict] = {}
    sizes, problems = [], []
    for path in map(Path, shards):
        if path.parent not in caches:
            caches[path.parent] = _read_size_cache(path.parent / SIZES_FILE, problems)
        cached = caches[path.parent].get(path.name)
        try:
            if path.suffix == ".tar" and cached is not None and cached <= path.stat().st_size // TAR_BLOCK:
                sizes.append(cached)  # a wrong count within that bound is found when the shard is opened
                continue
            sizes.append(shard_len(path))
        except ShardError as err:
            sizes.append(0)
            problems.append(Problem("corrupt_shard", str(path), str(err)))
            continue
        if cached is not None and cached != sizes[-1]:
            problems.append(Problem("stale_size", str(path), f"{SIZES_FILE} says {cached} rows, the shard has "
                                                             f"{sizes[-1]}"))
    return sizes, problems


def _read_size_cache(path: Path, problems: list[Problem]) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        cache = json.loads(read_bounded(path, MAX_SIZES_BYTES, "size cache").decode("utf-8"))
        return {k: v for k, v in cache.items() if isinstance(v, int) and v >= 0}
    except (ValueError, AttributeError, RecursionError) as err:
        problems.append(Problem("stale_size", str(path), f"unreadable size cache, ignored ({err})"))
        return {}


def write_sizes(directory: Path) -> dict[str, int]:
    """``sizes.json`` (shard name -> rows), as webdataset's wids uses, so readers skip the scan.
    Unreadable shards are left out."""
    directory = Path(directory)
    sizes = {}
    for path in expand_shards(directory):
        try:
            sizes[path.name] = shard_len(path)
        except ShardError:
            continue
    atomic_write(directory / SIZES_FILE, lambda tmp: tmp.write_text(json.dumps(sizes, indent=1)))
    return sizes


# ---------------------------------------------------------------- image folders

FILE_COLUMNS, CAPTION_COLUMNS = ("file", "image", "filepath", "path"), ("caption", "text", "title")


def _caption_rows(captions: Path, problems: list[Problem]) -> list[tuple[object, object]]:
    """(file, caption) pairs of a captions.jsonl / .csv; undecodable lines and rows are skipped and
    recorded in ``problems``; a CSV without the columns raises ``ValueError``."""
    # bad bytes kept (as surrogates) to find their rows
    text = read_bounded(captions, MAX_CAPTION_TABLE_BYTES, "caption table").decode("utf-8", "surrogateescape")
    if captions.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")  # bytes that were not UTF-8 became surrogates, which do not encode
                row = json.loads(line)
                rows.append((_pick(row, FILE_COLUMNS), _pick(row, CAPTION_COLUMNS)))
            except (UnicodeError, ValueError, AttributeError, StopIteration, RecursionError) as err:
                problems.append(Problem("bad_caption", f"{captions}:{number}",
                                        f"not a JSON object with {FILE_COLUMNS[0]!r} and {CAPTION_COLUMNS[0]!r} "
                                        f"in UTF-8 ({type(err).__name__})"))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if not set(columns) & set(FILE_COLUMNS) or not set(columns) & set(CAPTION_COLUMNS):
        raise ValueError(f"{captions} has columns {columns}; expected one of {list(FILE_COLUMNS)} and one of "
                         f"{list(CAPTION_COLUMNS)}")
    rows = []
    for row in reader:
        try:
            pair = (_pick(row, FILE_COLUMNS), _pick(row, CAPTION_COLUMNS))
            for value in pair:
                str(value).encode("utf-8")
            rows.append(pair)
        except (UnicodeError, StopIteration):
            problems.append(Problem("bad_caption", f"{captions}:{reader.line_num}", "row not UTF-8 or incomplete"))
    return rows


def _pick(row: dict, names: Sequence[str]):
    """The first of ``names`` present in ``row`` with a value (StopIteration when none is)."""
    return next(row[n] for n in names if row.get(n) is not None)


def folder_rows(folder: str | Path, captions: str | Path | None = None, labels_from_folders: bool = False,
                problems: list[Problem] | None = None) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """Rows (path, caption, label) of an image folder, sorted; and the class names (sub-folders)
    when ``labels_from_folders`` (ImageNet style; the caption is then the class name). Captions
    that are not UTF-8 or lines that do not parse are skipped and appended to ``problems``."""
    folder = Path(folder)
    problems = [] if problems is None else problems
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if labels_from_folders:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        return [(p, p.parent.name.replace("_", " "), index[p.parent.name]) for p in files
                if p.parent.name in index], classes
    captions = captions or next((folder / n for n in CAPTION_FILES if (folder / n).is_file()), None)
    table = {str(f): str(c) for f, c in _caption_rows(Path(captions), problems)} if captions else {}
    rows = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        txt = p.with_suffix(".txt")
        caption = table.get(rel, table.get(p.name))
        if caption is None and txt.is_file():
            try:
                caption = read_bounded(txt, MAX_CAPTION_BYTES, "caption").decode("utf-8").strip()
            except UnicodeDecodeError as err:
                problems.append(Problem("bad_caption", str(txt), f"not UTF-8 ({err.reason} at byte {err.start})"))
                continue
            except FileLimitError as err:
                problems.append(Problem("bad_caption", str(txt), str(err)))
                continue
        try:
            check_texts(caption or "", "caption")
        except ValueError as err:
            problems.append(Problem("bad_caption", str(txt if txt.is_file() else p), str(err)))
            continue
        if caption:
            rows.append((p, caption, -1))
        else:
            problems.append(Problem("missing_caption", str(p), "no caption (no captions-file row, no .txt, or "
                                                               "an empty one); image skipped"))
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

def write_tar(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """Atomically write a webdataset tar: member ``KEY.EXT`` per (key, {ext: bytes}) sample, in order."""
    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            for key, files in samples:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    atomic_write(path, write)


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

    def row(i: int) -> tuple[str, dict[str, bytes]]:
        buf = io.BytesIO()
        torch.save(latents[i].clone(), buf)
        files = {"latent.pt": buf.getvalue(), "txt": captions[i].encode()}
        if labels:
            files["cls"] = str(labels[i]).encode()
        return keys[i], files
    write_tar(path, map(row, range(len(keys))))


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
        return order, [0, *itertools.accumulate(self.sizes[s] for s in order)][:-1]

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


class MicroBatch(NamedTuple):
    """``inputs`` (B, ...) stacked latents or images; ``captions`` and ``sources`` ("shard key", the
    row that filled each slot) per sample; ``problems`` met building it (see :class:`Problem`)."""

    inputs: torch.Tensor
    captions: list[str]
    sources: list[str]
    problems: list[Problem]


MAX_REPLACEMENTS = 16


class TrainBatches(IterableDataset):
    """Micro-batches (:class:`MicroBatch`) for steps ``start_step, start_step+1, ...`` in order.
    Inputs are stacked latents, or images through ``transform`` for a pixel model. With DataLoader
    workers, worker w builds micro-batches k with k % workers == w (the loader interleaves them
    back in order), so the order never depends on the number of workers.

    A row that cannot be read (its shard is truncated or corrupt, the size cache promised more rows
    than the shard has, the row itself is corrupt) is replaced by the row at the same position one
    epoch later, and so on: still a pure function of (seed, step) and the data, so resuming replays it.
    """

    def __init__(self, shards: Sequence[Path], plan: BatchPlan, seed: int, start_step: int = 0,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, sizes: Sequence[int] | None = None):
        sizes = shard_sizes(shards)[0] if sizes is None else sizes
        mine = plan.my_shards(list(zip(shards, sizes)))
        self.shards, self.sizes = [Path(p) for p, _ in mine], [n for _, n in mine]
        self.stream = SampleStream(self.sizes, seed=seed)
        self.plan, self.start_step, self.transform = plan, start_step, transform
        self._open: dict[int, object] = {}

    def _shard(self, index: int, problems: list[Problem]):
        """The open shard ``index`` (the last two are kept), or why it could not be opened."""
        if index not in self._open:
            if len(self._open) >= 2:
                self._open.pop(next(iter(self._open)))
            path = self.shards[index]
            try:
                shard = open_shard(path)
            except ShardError as err:
                problems.append(Problem("corrupt_shard", str(path), str(err)))
                shard = str(err)  # the reason, for each of its rows
            else:
                if len(shard) != self.sizes[index]:
                    problems.append(Problem("stale_size", str(path), f"{SIZES_FILE} says {self.sizes[index]} rows, "
                                                                     f"the shard has {len(shard)}"))
            self._open[index] = shard
        return self._open[index]

    def _row(self, index: int, row: int, problems: list[Problem]) -> tuple[torch.Tensor, str, str]:
        shard = self._shard(index, problems)
        if isinstance(shard, str):
            raise ShardError(shard)
        if row >= len(shard):
            raise ShardError(f"{self.shards[index]} row {row}: the shard has only {len(shard)} rows")
        sample = shard[row]
        if self.transform is None:
            x = sample.latent
        else:
            try:
                x = self.transform(sample.image())
            except Exception as err:  # noqa: BLE001 - any undecodable image is one corrupt row
                raise ShardError(f"{self.shards[index]} sample {sample.key}: unreadable image "
                                 f"({type(err).__name__})") from None
        return x, sample.caption, f"{self.shards[index]} sample {sample.key}"

    def _read(self, position: int, problems: list[Problem]) -> tuple[torch.Tensor, str, str]:
        for attempt in range(MAX_REPLACEMENTS):
            index, row = self.stream.locate(position + attempt * self.stream.total)
            try:
                return self._row(index, row, problems)
            except ShardError as err:
                problems.append(Problem("skipped_sample", f"{self.shards[index]} row {row}", str(err)))
        raise ShardError(f"{MAX_REPLACEMENTS} rows in a row could not be read in place of stream position "
                         f"{position}: most of the data is unreadable (last: {problems[-1].detail})")

    def batch(self, step: int, micro: int) -> MicroBatch:
        problems: list[Problem] = []
        rows = [self._read(p, problems) for p in self.plan.positions(step, micro)]
        first = rows[0]
        odd = next(((x, s) for x, _, s in rows if x.shape != first[0].shape), None)
        if odd is not None:
            raise ShardError(f"step {step}: {odd[1]} has shape {tuple(odd[0].shape)} but {first[2]} has "
                             f"{tuple(first[0].shape)}; all samples must have one shape")
        return MicroBatch(torch.stack([x for x, _, _ in rows]), [c for _, c, _ in rows], [s for _, _, s in rows],
                          problems)

    def __iter__(self) -> Iterator[MicroBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        step, k = self.start_step, 0
        while True:
            for micro in range(self.plan.accum):
                if k % workers == worker:
                    yield self.batch(step, micro)
                k += 1
            step += 1
