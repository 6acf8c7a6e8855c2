"""The loop every benchmark shares: shard prompts over ranks, skip finished ones, render each with
or without ReNO, append per-image records to a JSONL, and print a summary table.

- Sharding: item ``i`` goes to rank ``i % world`` (torchrun's RANK / WORLD_SIZE, or SLURM's).
  No process group is created: ranks only share the output folder.
- Settings: ``<outdir>/run.json`` is written before anything else and records every option that
  decides the outputs (and the sha256 of the prompt files); a rerun with other settings is refused
  with the differences listed, so one folder never mixes two runs.
- Resume: each rank appends to ``<outdir>/results.rank<r>.jsonl`` after an item's files are
  written (atomically, see :mod:`.outputs`); an item is done once any JSONL in the folder holds a
  record for it, so a rerun (any world size, any ``--limit``) skips it. Unparsable (half-written)
  lines are ignored.
- Summary: rank 0 waits (``--summary-wait`` seconds) for the other ranks' ``finished.rank<r>``
  markers or for every item to be done, then writes ``summary.json`` and prints the table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from latent_clip import LatentContractError, check_family, load_model
from latent_clip.reno import RENO, optimize_noise
from latent_clip.rewards import CLIP_SCORE_WEIGHT, latent_alignment, latent_avoid, on_decoded, weighted_sum

from ..distributed import ranks_from_env
from . import pixel_rewards
from .generators import DiffusersGenerator, Timer, add_pipeline_args, generator_from_args
from .outputs import OutputTree

DATA = Path(__file__).parent / "data"  # bundled prompt files (see data/README.md for sources and licences)

RESULTS_GLOB = "results.rank*.jsonl"
RUN_FILE = "run.json"
# options that change how a run is executed, not what it writes: a resume may change them
OPERATIONAL = frozenset({"outdir", "limit", "device", "batch_size", "summary_wait"})


@dataclass
class Item:
    index: int            # global position: decides the rank and the resume key
    key: str              # human-readable id (folder name, category/prompt index)
    prompt: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Rank":
        return cls(*ranks_from_env())

    def device(self, spec: str) -> torch.device:
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(spec)
        return torch.device("cuda", self.local_rank) if dev.type == "cuda" and dev.index is None else dev


# ---------------------------------------------------------------- arguments
def add_common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generator")
    add_pipeline_args(g)
    g.add_argument("--resolution", type=int, help="pixels (default: the model's native size)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="UNet / transformer gradient checkpointing (ReNO memory)")
    g.add_argument("--cfg", type=float, default=0.0, help="CFG scale (<= 1: off, as turbo models)")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--outdir", required=True)
    g.add_argument("--limit", type=int, help="only the first N prompts (smoke runs)")
    g.add_argument("--samples", type=int, default=1, help="images per prompt (default: %(default)s, the protocol's)")
    g.add_argument("--seed", type=int, default=0, help="sample j uses seed + j (default: %(default)s, the protocol's)")
    g.add_argument("--batch-size", type=int, default=1, help="samples rendered together")
    g.add_argument("--summary-wait", type=float, default=600.0,
                   help="rank 0 waits this long for other ranks before summarising")
    r = p.add_argument_group("rewards (Latent-CLIP on raw latents; pixel rewards share one VAE decode)")
    r.add_argument("--latent-clip", help="Latent-CLIP weights (export / official checkpoint)")
    r.add_argument("--latent-clip-config", help="config name/JSON when the weights do not say")
    r.add_argument("--allow-family-mismatch", action="store_true",
                   help="run a Latent-CLIP on another VAE's latents than the pipeline makes (an experiment; "
                        "by default an error naming both latent families)")
    r.add_argument("--latent-weight", type=float, default=CLIP_SCORE_WEIGHT,
                   help="weight of Latent-CLIP CLIPScore loss")
    r.add_argument("--avoid", help="concepts to avoid, one per line or ';'-separated ('name | counter')")
    r.add_argument("--avoid-weight", type=float, default=CLIP_SCORE_WEIGHT,
                   help="weight of the concept loss (the Avoid node's default: the same pull per unit of cosine)")
    pixel_rewards.add_args(r)
    o = p.add_argument_group("ReNO (latent_clip.reno.optimize_noise)")
    o.add_argument("--iterations", type=int, default=RENO.iterations, help="0: no ReNO (baseline, same seeds)")
    for name in ("lr", "momentum", "grad_clip", "reg_weight"):  # optimize_noise's arguments of these names
        o.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(RENO, name))
    o.add_argument("--final-steps", type=int, default=1,
                   help="render the initial and the optimised noise with this many steps for the saved images "
                        "and recorded rewards (ReNO's multi-apply; FLUX-schnell: 4); ReNO itself uses 1 step")
    o.add_argument("--baseline-dir", help="also save the iteration-0 (no-ReNO) images here, same layout")


NO_REWARD = ("ReNO needs a reward: give --latent-clip, --pixel-clip, --hps-checkpoint, --pickscore or --reward-module "
             "(or --iterations 0)")


def requested_rewards(args: argparse.Namespace) -> list[str]:
    """The reward terms the options ask for (a source and a non-zero weight), before any model loads."""
    latent = ["latent_clip"] * bool(args.latent_clip and args.latent_weight)
    avoid = ["avoid"] * bool(args.latent_clip and args.avoid and args.avoid_weight)
    return latent + avoid + pixel_rewards.requested(args)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; a ReNO run without a reward is refused here, before its folder is claimed."""
    args = parser.parse_args(argv)
    if args.iterations > 0 and not requested_rewards(args):
        parser.error(NO_REWARD)
    return args


# ---------------------------------------------------------------- the run's identity
def sha256(source: str | Path | bytes) -> str:
    """Of a file's bytes, or of ``bytes`` themselves."""
    return hashlib.sha256(source if isinstance(source, bytes) else Path(source).read_bytes()).hexdigest()


def run_settings(args: argparse.Namespace, inputs: dict[str, str | Path | bytes], skip: Sequence[str] = ()) -> dict:
    """What decides a run's outputs: every option but :data:`OPERATIONAL` ones, ``skip`` and the
    options naming ``inputs``, which are recorded by content instead (name -> sha256 of the file or bytes)."""
    dropped = OPERATIONAL | set(skip) | set(inputs)
    options = {k: v for k, v in sorted(vars(args).items()) if k not in dropped}
    return {"options": json.loads(json.dumps(options)), "inputs": {k: sha256(p) for k, p in sorted(inputs.items())}}


def claim_outdir(outdir: str | Path, benchmark: str, settings: dict) -> None:
    """Start or resume a run in ``outdir``: write ``run.json`` when the folder holds no run, else
    raise ``SystemExit`` (one line per difference) unless it records the same benchmark and settings.
    Ranks claiming a new folder at once each write their own temporary and link it to ``run.json`` (which
    fails once it exists): one writes it, the others then compare their settings with it."""
    outdir = Path(outdir)
    path = outdir / RUN_FILE
    wanted = {"benchmark": benchmark, **settings}
    if not path.is_file():
        if outdir.is_dir() and any(outdir.glob(RESULTS_GLOB)):
            raise SystemExit(f"{outdir} holds results but no {RUN_FILE} (written by an older version or by hand), "
                             "so its settings are unknown: give a new --outdir")
        outdir.mkdir(parents=True, exist_ok=True)
        mine = outdir / f".{RUN_FILE}.{os.getpid()}.tmp"
        try:
            mine.write_text(json.dumps(wanted, indent=2), encoding="utf-8")
            os.link(mine, path)  # whole, and only if no rank wrote it first
        except FileExistsError:
            pass
        finally:
            mine.unlink(missing_ok=True)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}); cannot tell which run {outdir} holds") from None
    diffs = settings_diff(old, wanted)
    if diffs:
        raise SystemExit(f"{outdir} holds another run (its {RUN_FILE} differs: " + "; ".join(diffs) +
                         "). Resume with the same settings, or give a new --outdir.")


def settings_diff(old: dict, new: dict) -> list[str]:
    """``'section.key: on disk X, now Y'`` for every value that differs between two run records."""
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{section}.{k}: on disk {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{section}: on disk {a!r}, now {b!r}")
    return out


# ---------------------------------------------------------------- models
@dataclass
class Setup:
    rank: Rank
    device: torch.device
    gen: DiffusersGenerator
    out: OutputTree | None                      # this rank's writer in --outdir
    baseline: OutputTree | None = None          # and in --baseline-dir
    latent_clip: object = None
    pixel: dict = field(default_factory=dict)   # term name -> pixel_rewards.PixelTerm


def setup(args) -> Setup:
    rank = Rank.from_env()
    device = rank.device(args.device)
    gen = generator_from_args(args, device, args.resolution, args.grad_checkpointing)
    latent = None
    if args.latent_clip:
        latent = load_model(args.latent_clip, config=args.latent_clip_config, device=device, vae_encoder=False)
        latent.eval().requires_grad_(False)
        vae = gen.vae.config
        try:
            mismatch = check_family(latent.config.vision.family, vae.latent_channels, vae.scaling_factor,
                                    getattr(vae, "shift_factor", None), allow_mismatch=args.allow_family_mismatch,
                                    override="--allow-family-mismatch")
        except LatentContractError as err:
            raise type(err)(f"{args.latent_clip} with {args.pipeline}: {err}") from None
        if mismatch:
            warnings.warn(f"{args.latent_clip}: {mismatch}", stacklevel=2)
    pixel = pixel_rewards.load(args, device, gen.dtype)
    trees = [OutputTree(d, f"rank{rank.rank}") if d else None for d in (args.outdir, args.baseline_dir)]
    return Setup(rank, device, gen, *trees, latent, pixel)


def reward_terms(s: Setup, args, prompt: str) -> tuple[dict, dict]:
    """Named loss callables (raw latents -> (B,)) and their weights for one prompt; the pixel terms
    decode each latents tensor once between them."""
    terms, weights, wanted = {}, {}, requested_rewards(args)
    if "latent_clip" in wanted:
        terms["latent_clip"], weights["latent_clip"] = latent_alignment(s.latent_clip, prompt), args.latent_weight
    if "avoid" in wanted:
        terms["avoid"], weights["avoid"] = avoid_reward(s.latent_clip, args), args.avoid_weight
    if s.pixel:
        def decode(raw):  # once per latents tensor, shared by every pixel term (on_decoded)
            with s.gen.timer.section("decode"):  # inside the reward's section: booked as decode only
                return s.gen.decode(raw)
        terms.update(on_decoded({n: t.make(prompt) for n, t in s.pixel.items()}, decode))
        weights.update({n: t.weight for n, t in s.pixel.items()})
    return terms, weights


def avoid_reward(model, args) -> Callable[[torch.Tensor], torch.Tensor]:
    """``latent_avoid`` of the ``--avoid`` concepts (one per line, or ';'-separated)."""
    return latent_avoid(model, args.avoid.replace(";", "\n"))


def timed(fn: Callable, timer: Timer) -> Callable:
    """``fn`` with its forward booked as ``reward`` and its end marked for the backward hooks."""
    def wrapped(latent):
        with timer.section("reward"):
            out = fn(latent)
        timer.marks["reward_end"] = timer.now()
        return out
    return wrapped


# ---------------------------------------------------------------- rendering one prompt
@dataclass
class Rendered:
    latents: torch.Tensor              # (B, C, h, w) raw, best iterate
    initial: torch.Tensor              # (B, C, h, w) raw, iteration 0 (the no-ReNO image)
    losses: dict                       # name -> {"initial": [B], "best": [B]} (unweighted terms + total)
    iterations: int
    best_iteration: list


def render_steps(gen: DiffusersGenerator, cond, noise: torch.Tensor, steps: int, guidance_scale: float) -> torch.Tensor:
    """Raw latents of a ``steps``-step deterministic render of ``noise`` (no gradients)."""
    timesteps = gen.timesteps(steps)
    with torch.no_grad():
        return gen.to_raw(gen.sample(gen.start(noise, timesteps), timesteps, cond, guidance_scale))


def render(s: Setup, args, prompt: str, seeds: Sequence[int]) -> Rendered:
    """One-step generation for ``seeds`` with ReNO on the weighted rewards (``--iterations 0``:
    the one-step baseline, same seeds). With ``--final-steps N > 1`` the initial and the optimised
    noise are then rendered with N steps, and those renders are what is returned and scored."""
    gen = s.gen
    cond = gen.condition(prompt, args.cfg, args.negative_prompt)
    generate = gen.one_step(cond, guidance_scale=args.cfg)
    noise = gen.noise(list(seeds))
    terms, weights = reward_terms(s, args, prompt)
    if args.iterations > 0:
        if not terms:
            raise ValueError(NO_REWARD)
        total = timed(weighted_sum(terms, weights), s.gen.timer)
        first = {}

        def keep_first(progress):  # iteration 0 is the no-ReNO latent: keep it instead of regenerating
            if progress.iteration == 0:
                first["latent"] = progress.best_latent.detach().clone()
        result = optimize_noise(generate, total, noise, iterations=args.iterations, lr=args.lr,
                                momentum=args.momentum, grad_clip=args.grad_clip, reg_weight=args.reg_weight,
                                callback=keep_first)
        best, initial, best_noise = result.best_latent.float(), first["latent"].float(), result.best_noise
        iterations, best_it = int(result.history.shape[0]), result.best_iteration.tolist()
    else:
        with torch.no_grad():
            best = initial = generate(noise).float()
        iterations, best_it, best_noise = 0, [0] * len(seeds), noise
    if args.final_steps > 1:
        initial = render_steps(gen, cond, noise, args.final_steps, args.cfg)
        best = render_steps(gen, cond, best_noise, args.final_steps, args.cfg) if args.iterations > 0 else initial
    losses = {}
    with torch.no_grad(), s.gen.timer.section("reward"):
        for key, latents in (("initial", initial), ("best", best)):  # latents outermost: one decode each
            for name, fn in terms.items():
                losses.setdefault(name, {})[key] = fn(latents).float().tolist()
        if terms:
            losses["total"] = {k: [sum(weights[n] * losses[n][k][i] for n in terms) for i in range(len(seeds))]
                               for k in ("initial", "best")}
    return Rendered(best, initial, losses, iterations, best_it)


def render_and_save(s: Setup, args, item: Item, files: Sequence[str], **extra) -> list[dict]:
    """:func:`render` sample j from seed ``--seed + j``, ``--batch-size`` together, save it as
    ``files[j]`` in ``s.out`` (the no-ReNO one in ``s.baseline`` too) and return the records: each
    reward term's loss (initial and best) and the iterations; :func:`run` adds times and peak memory."""
    seeds, records = [args.seed + j for j in range(args.samples)], []
    for first in range(0, len(seeds), args.batch_size):
        batch, names = seeds[first:first + args.batch_size], files[first:first + args.batch_size]
        rendered = render(s, args, item.prompt, batch)
        for tree, latents in ((s.out, rendered.latents), (s.baseline, rendered.initial)):
            if tree is not None:
                for name, image in zip(names, decode_pil(s.gen, latents)):
                    tree.save_png(name, image)
        for j, seed in enumerate(batch):
            losses = {term: {"initial": v["initial"][j], "best": v["best"][j]} for term, v in rendered.losses.items()}
            records.append({"item": item.index, "key": item.key, "prompt": item.prompt, "sample": first + j,
                            "seed": seed, "file": names[j], "losses": losses, "iterations": rendered.iterations,
                            "best_iteration": rendered.best_iteration[j], **extra})
    return records


def decode_pil(gen: DiffusersGenerator, raw: torch.Tensor) -> list:
    """Raw latents (B, C, h, w) -> PIL images, booked as ``decode``."""
    with torch.no_grad(), gen.timer.section("decode"):
        x = ((gen.decode(raw).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in x]


def grid(images: list) -> Image.Image:
    """``images`` (same size) pasted row by row, at most 4 to a row."""
    cols = min(len(images), 4)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


# ---------------------------------------------------------------- the shared loop
def read_records(outdir: Path) -> list[dict]:
    """All records of all ranks; half-written lines skipped; later (item, sample, variant) wins."""
    latest = {}
    for path in sorted(Path(outdir).glob(RESULTS_GLOB)):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[(rec.get("item"), rec.get("sample"), rec.get("variant"))] = rec
    return list(latest.values())


def done_items(outdir: Path) -> set[int]:
    return {rec["item"] for rec in read_records(outdir)}


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (process peak RSS)


def run(name: str, items: Sequence[Item], process: Callable[[Item], list[dict]], s: Setup, args,
        summarise: Callable[[list[dict]], dict] | None = None) -> dict | None:
    """Process this rank's unfinished items in ``--outdir``, then (rank 0, after waiting up to
    ``--summary-wait`` s for the others) summarise. ``process`` writes the item's files and returns
    its records, to which this adds the time split, peak memory and rank."""
    start, rank, device, timer = time.time(), s.rank, s.device, s.gen.timer
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    marker = outdir / f"finished.rank{rank.rank}"
    marker.unlink(missing_ok=True)
    done = done_items(outdir)
    mine = [it for it in items if it.index % rank.world == rank.rank]
    todo = [it for it in mine if it.index not in done]
    results = outdir / f"results.rank{rank.rank}.jsonl"
    skipped = len(mine) - len(todo)
    for item in tqdm(todo, desc=f"{name} rank {rank.rank}/{rank.world}", unit="prompt", position=rank.rank,
                     dynamic_ncols=True):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        t0 = timer.now()
        records = process(item)
        total = timer.now() - t0
        spent = timer.reset()
        n = max(len(records), 1)
        times = {k: spent.get(k, 0.0) / n for k in ("unet", "reward", "decode", *spent)}
        times["other"] = max(total / n - sum(times.values()), 0.0)
        times["total"] = total / n
        mem = peak_memory_gb(device)
        for rec in records:
            rec.update(time=times, peak_memory_gb=mem, rank=rank.rank)
        with open(results, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
    marker.write_text(json.dumps({"items": len(mine), "skipped": skipped, "seconds": time.time() - start}))
    print(f"{name} rank {rank.rank}: {len(todo)} done, {skipped} skipped (already finished)", flush=True)
    if rank.rank != 0:
        return None
    wait_for_ranks(outdir, rank.world, start, {it.index for it in items}, args.summary_wait)
    summary = summarise_records(read_records(outdir), extra=summarise)
    summary.update(benchmark=name, items=len(items), items_done=len(done_items(outdir) & {it.index for it in items}))
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary), flush=True)
    return summary


def wait_for_ranks(outdir: Path, world: int, start: float, indices: set[int], timeout: float) -> None:
    deadline = time.time() + timeout
    while world > 1 and time.time() < deadline:
        markers = [outdir / f"finished.rank{r}" for r in range(1, world)]
        if all(m.is_file() and m.stat().st_mtime >= start - 1 for m in markers) or indices <= done_items(outdir):
            return
        time.sleep(1.0)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise_records(records: list[dict], extra: Callable[[list[dict]], dict] | None = None) -> dict:
    """Mean loss per reward term (initial = no ReNO, best = after ReNO; gain = initial - best,
    positive is better), s/image and its breakdown (``classify``: scoring the images, not making
    them), peak memory."""
    images = [r for r in records if "time" in r]
    out = {"images": len(images), "rewards": {}, "time_per_image": {}}
    names = sorted({n for r in images for n in r.get("losses", {})})
    for n in names:
        init = _mean([r["losses"][n]["initial"] for r in images if n in r.get("losses", {})])
        best = _mean([r["losses"][n]["best"] for r in images if n in r.get("losses", {})])
        out["rewards"][n] = {"initial_loss": init, "best_loss": best,
                             "gain": None if init is None or best is None else init - best}
    for k in ("unet", "reward", "decode", "other", "total", *sorted({k for r in images for k in r["time"]})):
        out["time_per_image"][k] = _mean([r["time"].get(k, 0.0) for r in images])
    out["iterations"] = _mean([r.get("iterations") for r in images])
    out["peak_memory_gb"] = max((r.get("peak_memory_gb", 0.0) for r in images), default=0.0)
    if extra is not None:
        out.update(extra(records))
    return out


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A table cell: ``value`` formatted, ``-`` when missing."""
    return "-" if value is None else format(value, spec)


def format_summary(s: dict) -> str:
    lines = [f"== {s.get('benchmark', '')}: {s.get('items_done', '?')}/{s.get('items', '?')} prompts, "
             f"{s['images']} images, {fmt(s.get('iterations'), '.1f')} ReNO iterations/image",
             f"{'reward loss':<16}{'initial':>10}{'best':>10}{'gain':>10}"]
    for n, v in s["rewards"].items():
        lines.append(f"{n:<16}" + "".join(f"{fmt(v[k], '.4f'):>10}" for k in ("initial_loss", "best_loss", "gain")))
    t = s["time_per_image"]
    lines.append("s/image " + fmt(t["total"]) + "  (" + ", ".join(
        f"{k} {fmt(v)}" for k, v in t.items() if k != "total") + ")")
    lines.append(f"peak memory {s['peak_memory_gb']:.2f} GiB")
    lines += [v for k, v in s.items() if k.startswith("table_")]
    return "\n".join(lines)
