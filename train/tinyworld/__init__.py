"""Tiny world: the paper's three claims reproduced end to end on one CPU (see ``study``)."""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> dict:
    from .study import main as run
    return run(argv)
