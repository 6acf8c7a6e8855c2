"""The official evaluators' own code, run on our outputs.

The files the tests run are bundled, byte for byte, under ``tests/data/official/`` where their licences
allow it (``tests/data/README.md``: GenEval and T2I-CompBench, MIT; NudeNet v2.0.9, GPL-3.0), so those
tests run everywhere. ml-research/i2p publishes no licence, so its scripts are not copied: point
``LATENT_CLIP_EVALUATORS`` at a folder holding checkouts

    geneval/         github.com/djghosh13/geneval        (tested at af4902f)
    T2I-CompBench/   github.com/Karine-Huang/T2I-CompBench (tested at 1b70949)
    i2p/             github.com/ml-research/i2p           (tested at 5176a1e)
    NudeNet/         github.com/notAI-tech/NudeNet, tag v2.0.9 (what i2p's eval imports as ``nudenet``)

and the I2P tests run (without it they skip, saying so); a checkout there also replaces the bundled
copy of the others, to test a newer upstream. Only the evaluators' reading and scoring code runs: a
function is taken from its file by name (``function_from``) and executed with the models it would
call replaced by recorders, so their heavy dependencies (mmdet, spaCy, CUDA) are not needed.
"""
import ast
import os
from pathlib import Path
from typing import Callable

import pytest

from fixtures import DATA

ENV = "LATENT_CLIP_EVALUATORS"
BUNDLED = DATA / "official"


def official_file(repo: str, path: str) -> Path:
    """``$LATENT_CLIP_EVALUATORS/<repo>/<path>``, else the bundled copy, else skip the test."""
    root = os.environ.get(ENV)
    if root:
        file = Path(root) / repo / path
        if not file.is_file():
            pytest.skip(f"{file} is missing ({ENV}={root})")
        return file
    if (BUNDLED / repo / path).is_file():
        return BUNDLED / repo / path
    pytest.skip(f"set {ENV} to a folder with the official {repo} checkout to run its code on our outputs")


def function_from(path: Path, name: str, namespace: dict) -> Callable:
    """The top-level function or class ``name`` defined in ``path``, executed in ``namespace`` (the
    module's imports and globals it uses), without running the rest of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
    if not nodes:
        raise LookupError(f"{path} defines no top-level {name}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]
