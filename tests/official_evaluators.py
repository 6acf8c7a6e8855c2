"""The official evaluators' own code, run on our outputs.

Other projects' code stays outside this repository. Point ``LATENT_CLIP_EVALUATORS`` at a folder holding
checkouts (CI uses its copy, laid out the same way)

    geneval/         github.com/djghosh13/geneval        (tested at af4902f)
    T2I-CompBench/   github.com/Karine-Huang/T2I-CompBench (tested at 1b70949)
    i2p/             github.com/ml-research/i2p           (tested at 5176a1e)
    NudeNet/         github.com/notAI-tech/NudeNet, tag v2.0.9 (what i2p's eval imports as ``nudenet``)

and these tests run; without it each skips with one line saying so. A file missing under a folder that the
variable does name is a broken set-up, so the test fails. Only the evaluators' reading and scoring code runs:
a function is taken from its file by name (``function_from``) and executed with the models it would call
replaced by recorders, so their heavy dependencies (mmdet, spaCy, CUDA) are not needed.
"""
import ast
import os
from pathlib import Path
from typing import Callable

import pytest

ENV = "LATENT_CLIP_EVALUATORS"


def official_file(repo: str, path: str) -> Path:
    """``$LATENT_CLIP_EVALUATORS/<repo>/<path>``; skips the test when the variable is unset, fails when the
    folder it names lacks the file."""
    root = os.environ.get(ENV)
    if not root:
        pytest.skip(f"official {repo} code not run: set {ENV} to a folder with its checkout "
                    f"(tests/official_evaluators.py)")
    file = Path(root) / repo / path
    if not file.is_file():
        pytest.fail(f"{file} is missing: {ENV}={root} must hold {repo}/{path}", pytrace=False)
    return file


def function_from(path: Path, name: str, namespace: dict) -> Callable:
    """The top-level function or class ``name`` defined in ``path``, executed in ``namespace`` (the
    module's imports and globals it uses), without running the rest of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
    if not nodes:
        raise LookupError(f"{path} defines no top-level {name}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]
