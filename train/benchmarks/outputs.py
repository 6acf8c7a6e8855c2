"""Output folders that an official evaluator may read at any moment: mid-run, or after a kill.

- Every file appears complete under its final name: it is written into ``<root>/.staging/rank<r>/``
  (hidden, listed by no evaluator, on the same file system) and renamed into place.
- A folder that must hold a file before anything else (GenEval's ``<prompt>/metadata.jsonl`` and
  ``samples/``) is built in the staging folder and renamed into place whole.
- Each writer (``rank<r>`` of a run) empties its own staging folder when it starts, so what a
  killed run left there neither piles up nor reaches an evaluator.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

from latent_clip.files import atomic_write

STAGING = ".staging"


class OutputTree:
    """Atomic writes under ``root`` by one writer (``rank<r>``; writers never write the same file)."""

    def __init__(self, root: str | Path, writer: str):
        self.root = Path(root)
        self.staging = self.root / STAGING / writer
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str | Path, write: Callable[[Path], object]) -> Path:
        """``write(tmp)`` in the staging folder, then rename to ``root/rel``."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write, self.staging)
        return path

    def write_text(self, rel: str | Path, text: str) -> Path:
        return self.write(rel, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def save_png(self, rel: str | Path, image) -> Path:
        return self.write(rel, lambda tmp: image.save(tmp, format="PNG"))

    def folder(self, rel: str | Path, files: Mapping[str, str], subdirs: Sequence[str] = ()) -> Path:
        """``root/rel`` holding ``files`` (name -> text) and the folders ``subdirs``. A missing folder
        appears whole (one rename); an existing one (a resumed prompt) gets what it lacks, atomically."""
        path = self.root / rel
        if not path.is_dir():
            tmp = self.staging / f"{path.name}.dir"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            for sub in subdirs:
                (tmp / sub).mkdir()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, path)
            return path
        for name, text in files.items():
            if not (path / name).is_file():
                self.write_text(Path(rel) / name, text)
        for sub in subdirs:
            (path / sub).mkdir(exist_ok=True)
        return path
