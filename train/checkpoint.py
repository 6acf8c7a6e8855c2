"""Training checkpoints in the official layout, exact resume, and adapting pixel CLIP weights.

A checkpoint is what the authors' open_clip fork writes, ``{epoch, name, state_dict (module.-
prefixed), optimizer}``, so :func:`latent_clip.load_model` reads it, plus what resuming needs:
``step``, ``config`` (the resolved FitConfig), ``model_cfg``, ``model_kind``, ``samples_seen``
and the RNG states. Files are written to a temp name and renamed (never half-written).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from latent_clip import save_official_checkpoint
from latent_clip.factory import load_pickle_safely, read_state_dict, strip_prefixes

LATEST = "epoch_latest.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """``"latest"`` -> the run's latest checkpoint if one exists (else start fresh); a path -> itself."""
    if not resume:
        return None
    if resume == "latest":
        path = checkpoint_dir(run_dir) / LATEST
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return path


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
         samples_seen: int, config: dict, model_cfg: dict, model_kind: str, keep: bool = False) -> Path:
    directory = checkpoint_dir(run_dir)
    extra = dict(step=step, samples_seen=samples_seen, config=config, model_cfg=model_cfg,
                 model_kind=model_kind, rng=rng_state())
    path = save_official_checkpoint(directory / LATEST, model, epoch=epoch, name=config["name"],
                                    optimizer=optimizer.state_dict(), **extra)
    if keep:
        kept = directory / f"step_{step}.pt"
        kept.with_name(kept.name + ".tmp").write_bytes(path.read_bytes())
        kept.with_name(kept.name + ".tmp").replace(kept)
    return path


def load(path: Path) -> dict[str, Any]:
    """The whole checkpoint (weights_only: tensors, plain data, numpy scalars), prefixes stripped."""
    ckpt = load_pickle_safely(Path(path))
    ckpt["state_dict"] = {strip_prefixes(k): v for k, v in ckpt["state_dict"].items()}
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


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Strict weight init from a training checkpoint / state dict / export of the same architecture."""
    state, _ = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if k != "attn_mask"] or unexpected:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")


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
