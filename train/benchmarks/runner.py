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
import dataclasses
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
from latent_clip.reno import RENO, RenoSettings, optimize_noise
from latent_clip.rewards import CLIP_SCORE_WEIGHT, latent_alignment, latent_avoid, on_decoded, weighted_sum

from .. import DistEnv
from . import pixel_rewards
from .generators import DiffusersGenerator, GeneratorSettings, Timer, add_pipeline_args, load_generator
from .outputs import OutputTree
from .pixel_rewards import PixelRewardFactory, PixelRewardSettings
from .settings import options_of, record_from

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


@dataclass(frozen=True)
class RewardSettings:
    """The reward options of :func:`add_common_args`: Latent-CLIP's CLIPScore and concept-avoid terms on raw
    latents, and the pixel rewards (a term is used when it has a source and a non-zero weight)."""

    latent_clip: str | None             # Latent-CLIP weights
    latent_clip_config: str | None
    allow_family_mismatch: bool
    latent_weight: float
    avoid: str | None                   # concepts to avoid, one per line or ';'-separated
    avoid_weight: float
    pixel: PixelRewardSettings

    def requested(self) -> list[str]:
        """The reward terms asked for, before any model loads."""
        latent = ["latent_clip"] * bool(self.latent_clip and self.latent_weight)
        avoid = ["avoid"] * bool(self.latent_clip and self.avoid and self.avoid_weight)
        return latent + avoid + pixel_rewards.requested(self.pixel)


@dataclass(frozen=True)
class GenerationSettings:
    """The options of :func:`add_common_args` (defaults and help there), typed: how every generation
    benchmark renders, scores and optimises its images, and where it writes them."""

    generator: GeneratorSettings
    resolution: int | None
    grad_checkpointing: bool
    cfg: float
    negative_prompt: str | None
    outdir: str
    limit: int | None
    samples: int                        # images per prompt; sample j from seed + j
    seed: int
    batch_size: int
    summary_wait: float
    rewards: RewardSettings
    reno: RenoSettings                  # optimize_noise's arguments; iterations 0: no ReNO
    final_steps: int
    baseline_dir: str | None


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; a ReNO run without a reward is refused here, before its folder is claimed."""
    args = parser.parse_args(argv)
    if args.iterations > 0 and not record_from(RewardSettings, args).requested():
        parser.error(NO_REWARD)
    return args


# ---------------------------------------------------------------- the run's identity
def sha256(source: str | Path | bytes) -> str:
    """Of a file's bytes, or of ``bytes`` themselves."""
    return hashlib.sha256(source if isinstance(source, bytes) else Path(source).read_bytes()).hexdigest()


def run_settings(settings, inputs: dict[str, str | Path | bytes], skip: Sequence[str] = ()) -> dict:
    """What decides a run's outputs: every option of the ``settings`` record (:func:`.settings.options_of`)
    but :data:`OPERATIONAL` ones, ``skip`` and the options naming ``inputs``, which are recorded by content
    instead (name -> sha256 of the file or bytes)."""
    dropped = OPERATIONAL | set(skip) | set(inputs)
    options = {k: v for k, v in sorted(options_of(settings).items()) if k not in dropped}
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
class RankResources:
    """What one rank of a run works with: where it runs, the generator, its image writers and the
    loaded reward models."""

    dist_env: DistEnv                              # rank, world size, device (no process group)
    generator: DiffusersGenerator
    images: OutputTree | None                      # this rank's writer in --outdir
    baseline_images: OutputTree | None = None      # and in --baseline-dir
    latent_clip: object = None
    pixel_rewards: dict[str, PixelRewardFactory] = field(default_factory=dict)   # by term name


def load_resources(settings: GenerationSettings) -> RankResources:
    """This rank's :class:`RankResources` for a generation benchmark run with ``settings``."""
    dist_env = DistEnv.from_env(settings.generator.device)
    generator = load_generator(settings.generator, dist_env.device, settings.resolution, settings.grad_checkpointing)
    latent = load_latent_clip(settings.rewards, generator, settings.generator.pipeline, dist_env.device) \
        if settings.rewards.latent_clip else None
    pixel = pixel_rewards.load(settings.rewards.pixel, dist_env.device, generator.dtype)
    trees = [OutputTree(d, f"rank{dist_env.rank}") if d else None for d in (settings.outdir, settings.baseline_dir)]
    return RankResources(dist_env, generator, *trees, latent, pixel)


def load_latent_clip(rewards: RewardSettings, generator: DiffusersGenerator, pipeline: str, device: torch.device):
    """``--latent-clip``, frozen, checked against the latent family ``generator``'s VAE makes (an error naming
    both, or a warning with ``--allow-family-mismatch``)."""
    model = load_model(rewards.latent_clip, config=rewards.latent_clip_config, device=device, vae_encoder=False)
    model.eval().requires_grad_(False)
    vae = generator.vae.config
    try:
        mismatch = check_family(model.config.vision.family, vae.latent_channels, vae.scaling_factor,
                                getattr(vae, "shift_factor", None), allow_mismatch=rewards.allow_family_mismatch,
                                override="--allow-family-mismatch")
    except LatentContractError as err:
        raise type(err)(f"{rewards.latent_clip} with {pipeline}: {err}") from None
    if mismatch:
        warnings.warn(f"{rewards.latent_clip}: {mismatch}", stacklevel=3)
    return model


def reward_terms(resources: RankResources, rewards: RewardSettings, prompt: str) -> tuple[dict, dict]:
    """Named loss callables (raw latents -> (B,)) and their weights for one prompt; the pixel terms
    decode each latents tensor once between them."""
    terms, weights, wanted = {}, {}, rewards.requested()
    if "latent_clip" in wanted:
        terms["latent_clip"] = latent_alignment(resources.latent_clip, prompt)
        weights["latent_clip"] = rewards.latent_weight
    if "avoid" in wanted:
        terms["avoid"], weights["avoid"] = avoid_reward(resources.latent_clip, rewards.avoid), rewards.avoid_weight
    if resources.pixel_rewards:
        generator = resources.generator

        def decode(raw):  # once per latents tensor, shared by every pixel term (on_decoded)
            with generator.timer.section("decode"):  # inside the reward's section: booked as decode only
                return generator.decode(raw)
        terms.update(on_decoded({n: r.make(prompt) for n, r in resources.pixel_rewards.items()}, decode))
        weights.update({n: r.weight for n, r in resources.pixel_rewards.items()})
    return terms, weights


def avoid_reward(model, concepts: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``latent_avoid`` of the ``--avoid`` concepts (one per line, or ';'-separated)."""
    return latent_avoid(model, concepts.replace(";", "\n"))


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


def render_steps(generator: DiffusersGenerator, cond, noise: torch.Tensor, steps: int,
                 guidance_scale: float) -> torch.Tensor:
    """Raw latents of a ``steps``-step deterministic render of ``noise`` (no gradients)."""
    timesteps = generator.timesteps(steps)
    with torch.no_grad():
        return generator.to_raw(generator.sample(generator.start(noise, timesteps), timesteps, cond, guidance_scale))


def render(resources: RankResources, settings: GenerationSettings, prompt: str, seeds: Sequence[int]) -> Rendered:
    """One-step generation for ``seeds`` with ReNO on the weighted rewards (``--iterations 0``:
    the one-step baseline, same seeds). With ``--final-steps N > 1`` the initial and the optimised
    noise are then rendered with N steps, and those renders are what is returned and scored."""
    generator, reno = resources.generator, settings.reno
    cond = generator.condition(prompt, settings.cfg, settings.negative_prompt)
    generate = generator.one_step(cond, guidance_scale=settings.cfg)
    noise = generator.noise(list(seeds))
    terms, weights = reward_terms(resources, settings.rewards, prompt)
    if reno.iterations > 0:
        if not terms:
            raise ValueError(NO_REWARD)
        total = timed(weighted_sum(terms, weights), generator.timer)
        first = {}

        def keep_first(progress):  # iteration 0 is the no-ReNO latent: keep it instead of regenerating
            if progress.iteration == 0:
                first["latent"] = progress.best_latent.detach().clone()
        result = optimize_noise(generate, total, noise, **dataclasses.asdict(reno), callback=keep_first)
        best, initial, best_noise = result.best_latent.float(), first["latent"].float(), result.best_noise
        iterations, best_it = int(result.history.shape[0]), result.best_iteration.tolist()
    else:
        with torch.no_grad():
            best = initial = generate(noise).float()
        iterations, best_it, best_noise = 0, [0] * len(seeds), noise
    if settings.final_steps > 1:
        initial = render_steps(generator, cond, noise, settings.final_steps, settings.cfg)
        best = render_steps(generator, cond, best_noise, settings.final_steps, settings.cfg) \
            if reno.iterations > 0 else initial
    losses = {}
    with torch.no_grad(), generator.timer.section("reward"):
        for key, latents in (("initial", initial), ("best", best)):  # latents outermost: one decode each
            for name, fn in terms.items():
                losses.setdefault(name, {})[key] = fn(latents).float().tolist()
        if terms:
            losses["total"] = {k: [sum(weights[n] * losses[n][k][i] for n in terms) for i in range(len(seeds))]
                               for k in ("initial", "best")}
    return Rendered(best, initial, losses, iterations, best_it)


def render_and_save(resources: RankResources, settings: GenerationSettings, item: Item, files: Sequence[str],
                    **extra) -> list[dict]:
    """:func:`render` sample j from seed ``--seed + j``, ``--batch-size`` together, save it as
    ``files[j]`` in ``resources.images`` (the no-ReNO one in ``resources.baseline_images`` too) and return
    the records: each reward term's loss (initial and best) and the iterations; :func:`run` adds times and
    peak memory."""
    seeds, records = [settings.seed + j for j in range(settings.samples)], []
    for first in range(0, len(seeds), settings.batch_size):
        batch, names = seeds[first:first + settings.batch_size], files[first:first + settings.batch_size]
        rendered = render(resources, settings, item.prompt, batch)
        for tree, latents in ((resources.images, rendered.latents), (resources.baseline_images, rendered.initial)):
            if tree is not None:
                for name, image in zip(names, decode_pil(resources.generator, latents)):
                    tree.save_png(name, image)
        for j, seed in enumerate(batch):
            losses = {term: {"initial": v["initial"][j], "best": v["best"][j]} for term, v in rendered.losses.items()}
            records.append({"item": item.index, "key": item.key, "prompt": item.prompt, "sample": first + j,
                            "seed": seed, "file": names[j], "losses": losses, "iterations": rendered.iterations,
                            "best_iteration": rendered.best_iteration[j], **extra})
    return records


def decode_pil(generator: DiffusersGenerator, raw: torch.Tensor) -> list:
    """Raw latents (B, C, h, w) -> PIL images, booked as ``decode``."""
    with torch.no_grad(), generator.timer.section("decode"):
        x = ((generator.decode(raw).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
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


def run(name: str, items: Sequence[Item], process: Callable[[Item], list[dict]], resources: RankResources,
        outdir: str | Path, summary_wait: float,
        summarise: Callable[[list[dict]], dict] | None = None) -> dict | None:
    """Process this rank's unfinished items in ``outdir`` (``--outdir``), then (rank 0, after waiting up to
    ``summary_wait`` s (``--summary-wait``) for the others) summarise. ``process`` writes the item's files and
    returns its records, to which this adds the time split, peak memory and rank."""
    start, dist_env, timer = time.time(), resources.dist_env, resources.generator.timer
    device = dist_env.device
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    marker = outdir / f"finished.rank{dist_env.rank}"
    marker.unlink(missing_ok=True)
    done = done_items(outdir)
    mine = [it for it in items if it.index % dist_env.world_size == dist_env.rank]
    todo = [it for it in mine if it.index not in done]
    results = outdir / f"results.rank{dist_env.rank}.jsonl"
    skipped = len(mine) - len(todo)
    for item in tqdm(todo, desc=f"{name} rank {dist_env.rank}/{dist_env.world_size}", unit="prompt",
                     position=dist_env.rank, dynamic_ncols=True):
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
            rec.update(time=times, peak_memory_gb=mem, rank=dist_env.rank)
        with open(results, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
    marker.write_text(json.dumps({"items": len(mine), "skipped": skipped, "seconds": time.time() - start}))
    print(f"{name} rank {dist_env.rank}: {len(todo)} done, {skipped} skipped (already finished)", flush=True)
    if dist_env.rank != 0:
        return None
    wait_for_ranks(outdir, dist_env.world_size, start, {it.index for it in items}, summary_wait)
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


def cell(value: float | None, spec: str = ".3f") -> str:
    """A table cell: ``value`` formatted, ``-`` when missing."""
    return "-" if value is None else format(value, spec)


def format_summary(summary: dict) -> str:
    lines = [f"== {summary.get('benchmark', '')}: {summary.get('items_done', '?')}/{summary.get('items', '?')} "
             f"prompts, {summary['images']} images, {cell(summary.get('iterations'), '.1f')} ReNO iterations/image",
             f"{'reward loss':<16}{'initial':>10}{'best':>10}{'gain':>10}"]
    for n, v in summary["rewards"].items():
        lines.append(f"{n:<16}" + "".join(f"{cell(v[k], '.4f'):>10}" for k in ("initial_loss", "best_loss", "gain")))
    t = summary["time_per_image"]
    lines.append("s/image " + cell(t["total"]) + "  (" + ", ".join(
        f"{k} {cell(v)}" for k, v in t.items() if k != "total") + ")")
    lines.append(f"peak memory {summary['peak_memory_gb']:.2f} GiB")
    lines += [v for k, v in summary.items() if k.startswith("table_")]
    return "\n".join(lines)
