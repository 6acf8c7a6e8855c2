"""LATENT dicts and text widgets: the samples of a LATENT, the lines of a multiline input, reports."""
from __future__ import annotations

import torch

from ..latent_clip.fields import field_lines


def samples(latent: dict) -> torch.Tensor:
    """A LATENT's raw VAE latents (B, C, H, W); raises a readable error on anything else."""
    z = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(z, torch.Tensor):
        raise ValueError("expected a LATENT (a dict with 'samples'); got something else")
    return z


def lines(text: str, what: str, limit: int) -> list[str]:
    """Non-empty stripped lines of a multiline widget, at most ``limit``, each within the text bounds
    (:func:`latent_clip.fields.field_lines`); raises when there are none."""
    out = field_lines(text, what, limit)
    if not out:
        raise ValueError(f"no {what} given: write one per line")
    return out


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(c).rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])
