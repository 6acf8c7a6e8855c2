"""The official Latent-CLIP weights: where they are published, their architecture, and how a local copy is
found and recognised. Nothing is ever downloaded here.

Download a file yourself (:attr:`PretrainedWeights.download_command`, e.g. ``huggingface-cli download
wendlerc/latent-clip-b-8-512-34b-80k checkpoints/epoch_34.pt``); :func:`latent_clip.load_model` then takes the
registry name and reads the file from the Hugging Face cache, with the registry's architecture. A file passed
by path is recognised by its SHA-256 where the registry records one. No hash is recorded yet: none was read
from the published files, and a guessed one would recognise nothing (``python -m latent_clip info FILE``
prints a file's hash, to compare with the one Hugging Face shows on the file's page).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .fields import shorten


@dataclass(frozen=True)
class PretrainedWeights:
    name: str
    config: str          # architecture name in latent_clip/model_configs
    hf_repo: str
    hf_file: str
    latent_family: str   # the VAE whose raw latents the weights expect
    notes: str = ""
    sha256: str = ""     # of the published file, where it was read from it; empty: unknown

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_file}"

    @property
    def download_command(self) -> str:
        return f"huggingface-cli download {self.hf_repo} {self.hf_file}"


REGISTRY = (
    PretrainedWeights("latent-clip-b-8-512-34b-80k", "Latent-ViT-B-8-512",
                      "wendlerc/latent-clip-b-8-512-34b-80k", "checkpoints/epoch_34.pt", "sdxl",
                      "official ViT-B/8, 34B samples; ImageNet zero-shot 68.8 (paper)"),
    PretrainedWeights("latent-clip-b-4-512-plus-34b-80k", "Latent-ViT-B-4-512-plus",
                      "wendlerc/latent-clip-b-4-512-plus-34b-80k", "checkpoints/epoch_34.pt", "sdxl",
                      "official ViT-B/4-plus, 34B samples; ImageNet zero-shot 73.5 (paper)"),
    PretrainedWeights("latent-clip-b-8-512-34b-40k", "Latent-ViT-B-8-512",
                      "wendlerc/latent-clip-b-8-512-34b-40k", "checkpoints/epoch_34.pt", "sdxl",
                      "file name assumed from the 34b-80k repos (unverified)"),
    PretrainedWeights("latent-clip-b-4-512-13b-80k", "Latent-ViT-B-4-512",
                      "wendlerc/latent-clip-b-4-512-13b-80k", "checkpoints/epoch_13.pt", "sdxl",
                      "file name inferred from the 13-epoch schedule (unverified)"),
    PretrainedWeights("latent-clip-b-4-512-plus-13b-80k", "Latent-ViT-B-4-512-plus",
                      "wendlerc/latent-clip-b-4-512-plus-13b-80k", "checkpoints/epoch_13.pt", "sdxl",
                      "file name inferred from the 13-epoch schedule (unverified)"),
)


def get_pretrained(name: str) -> PretrainedWeights:
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown weights {shorten(name, 60)!r}; known: {', '.join(e.name for e in REGISTRY)}")


def local_copy(entry: PretrainedWeights) -> Path:
    """The file of ``entry`` in the Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``, else
    ``~/.cache/huggingface``), where ``huggingface-cli download`` put it; ``FileNotFoundError`` in one line
    with the command to run when it is not there. Reads the cache only: nothing is fetched."""
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(entry.hf_repo, entry.hf_file)
    if not isinstance(found, str):
        raise FileNotFoundError(f"{entry.name} is not in the Hugging Face cache: download it with "
                                f"`{entry.download_command}` (nothing is fetched here), or pass the file's path")
    return Path(found)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file at ``path`` (read in 1 MiB chunks), as Hugging Face shows it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recognise(path: str | Path) -> PretrainedWeights | None:
    """The registry entry whose recorded SHA-256 the file at ``path`` has, else None. The file is hashed only
    when some entry records a hash."""
    known = {entry.sha256: entry for entry in REGISTRY if entry.sha256}
    return known.get(file_sha256(path)) if known else None


def resolve_weights(source: str | Path) -> tuple[Path, PretrainedWeights | None]:
    """(the weights file, its registry entry or None) for ``source``: a path to a file (recognised by its
    hash, :func:`recognise`), or a registry name (read from the Hugging Face cache, :func:`local_copy`). A
    path that is no file and no registry name is returned as it is, for the reader to report."""
    path = Path(source)
    if path.is_file():
        return path, recognise(path)
    if isinstance(source, str) and source in {entry.name for entry in REGISTRY}:
        entry = get_pretrained(source)
        return local_copy(entry), entry
    return path, None
