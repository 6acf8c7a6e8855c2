"""Training checkpoints in the official layout, exact resume, and adapting pixel CLIP weights.

A checkpoint is what the authors' open_clip fork writes, ``{epoch, name, state_dict (module.-
prefixed), optimizer}``, so :func:`latent_clip.load_model` reads it, plus what resuming needs:
``step``, ``config`` (the resolved FitConfig), ``model_cfg``, ``model_kind``, ``samples_seen``,
the RNG states and the bad-data counts. Files are written to a temp name and renamed (never
half-written); resuming falls back past unreadable ones and never overwrites a kept one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from latent_clip import save_official_checkpoint
from latent_clip.files import atomic_write
from latent_clip.weights import CheckpointError, check_tensors, load_pickle_safely, read_state_dict, strip_prefixes

LATEST = "epoch_latest.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def kept_checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> the ``step_{N}.pt`` files kept in the run's checkpoint folder."""
    numbered = {p.stem.removeprefix("step_"): p for p in checkpoint_dir(run_dir).glob("step_*.pt")}
    return {int(number): path for number, path in numbered.items() if number.isdigit()}


def find_resume(resume: str | None, run_dir: Path) -> tuple[Path, dict] | None:
    """(path, checkpoint) to resume from, or None for a fresh start.

    No ``resume``: a fresh start, refused when the run folder holds checkpoints (it would overwrite
    them). ``"latest"``: the newest readable of ``epoch_latest.pt`` and the kept ``step_N.pt`` (a
    warning names each unreadable one); an error when none is readable. A path: that checkpoint.
    Resuming before a readable kept checkpoint is refused (the run would overwrite it).
    """
    directory, kept = checkpoint_dir(run_dir), kept_checkpoints(run_dir)
    if not resume:
        existing = [p.name for p in [directory / LATEST, *kept.values()] if p.is_file()]
        if existing:
            raise FileExistsError(f"{directory} already holds checkpoints ({', '.join(sorted(existing)[:4])}); "
                                  f"pass --resume latest to continue that run, or another --name / --out-dir")
        return None
    if resume != "latest":
        if not Path(resume).is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {resume}")
        chosen = (Path(resume), load(Path(resume)))
    else:
        candidates = [directory / LATEST, *(kept[n] for n in sorted(kept, reverse=True))]
        readable = []
        for path in (c for c in candidates if c.is_file()):
            try:
                readable.append((path, load(path)))
            except CheckpointError as err:
                print(f"warning: cannot resume from {path}, skipping it: {err}", flush=True)
        if not readable:
            raise FileNotFoundError(f"--resume latest: no readable checkpoint in {directory} "
                                    f"(looked for {LATEST} and step_N.pt)")
        chosen = max(readable, key=lambda pc: pc[1]["step"])
        if chosen[0].name != LATEST:
            print(f"warning: resuming from {chosen[0]} (step {chosen[1]['step']}), the newest readable checkpoint",
                  flush=True)
    step = chosen[1]["step"]
    for later in (kept[n] for n in sorted(kept) if n > step):
        try:
            load(later)
        except CheckpointError:
            continue  # unreadable: replacing it loses nothing
        raise FileExistsError(f"resuming at step {step} would overwrite the kept checkpoint {later}; resume from "
                              f"it (--resume latest) or move it away")
    return chosen


def trim_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` in the JSONL log at ``path`` (and no torn last line),
    so that the steps a resumed run redoes are logged once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int, epoch: int,
         samples_seen: int, config: dict, model_cfg: dict, model_kind: str, keep: bool = False,
         **extra: Any) -> Path:
    directory = checkpoint_dir(run_dir)
    extra = dict(step=step, samples_seen=samples_seen, config=config, model_cfg=model_cfg,
                 model_kind=model_kind, rng=rng_state(), **extra)
    path = save_official_checkpoint(directory / LATEST, model, epoch=epoch, name=config["name"],
                                    optimizer=optimizer.state_dict(), **extra)
    if keep:
        atomic_write(directory / f"step_{step}.pt", lambda tmp: shutil.copyfile(path, tmp))
    return path


REQUIRED = ("state_dict", "optimizer", "step", "rng", "config")


def load(path: Path) -> dict[str, Any]:
    """The whole checkpoint (weights_only: tensors, plain data, numpy scalars), prefixes stripped;
    raises :class:`CheckpointError` when it is unreadable, incomplete or its weights are not finite."""
    path = Path(path)
    ckpt = load_pickle_safely(path)
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer: it lacks {missing}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()) or not isinstance(ckpt["step"], int):
        raise CheckpointError(f"{path}: expected a state_dict of named tensors and an integer step")
    ckpt["state_dict"] = {strip_prefixes(k): v for k, v in state.items()}
    check_tensors(ckpt["state_dict"], path)
    return ckpt


def adapt_pixel_clip(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Initialise a Latent-CLIP from a pixel open_clip checkpoint, as the authors' fork does:
    ``visual.*`` -> ``visual.latent_vit.*``, drop the RGB patch embedding ``conv1`` (re-initialised
    for C latent channels), resample the positional embedding to the latent patch grid, load the
    rest non-strictly. Returns the keys left at their initialisation."""
    state, _ = read_state_dict(path)
    target = model.state_dict()
    adapted = {}
    for key, value in state.items():
        new = "visual.latent_vit." + key[len("visual."):] if key.startswith("visual.") else key
        if new == "visual.latent_vit.conv1.weight" or new not in target:
            continue
        if new == "visual.latent_vit.positional_embedding" and value.shape != target[new].shape:
            grid = int(round((target[new].shape[0] - 1) ** 0.5))
            old = int(round((value.shape[0] - 1) ** 0.5))
            value = resample_abs_pos_embed(value[None], [grid, grid], [old, old], num_prefix_tokens=1)[0]
        if value.shape == target[new].shape:
            adapted[new] = value
    model.load_state_dict(adapted, strict=False)
    return {"initialised": sorted(set(target) - set(adapted)), "loaded": sorted(adapted)}


PATCH_EMBED = ("visual.latent_vit.conv1.weight", "visual.latent_vit.positional_embedding")


def freeze(model: nn.Module, mode: str) -> None:
    """``patch-embed``: stage 1 of the pixel -> latent adaptation; only the new patch embedding and
    positional embedding train (the fork's quirk of leaving parts of the text tower trainable is
    not reproduced)."""
    if mode == "none":
        return
    if mode != "patch-embed":
        raise ValueError(f"freeze must be 'none' or 'patch-embed', got {mode!r}")
    for name, p in model.named_parameters():
        p.requires_grad_(name in PATCH_EMBED)
