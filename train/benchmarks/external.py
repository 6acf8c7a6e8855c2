"""User code named on the command line: ``module:function`` or ``path/to/file.py[:function]``
(I2P's ``--classifier``, the benchmarks' ``--reward-module``)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable


def split_spec(spec: str) -> tuple[str, str | None]:
    """``'a/b.py:fn'`` -> ``('a/b.py', 'fn')``; ``'a/b.py'`` -> ``('a/b.py', None)`` (a drive
    letter's colon, as in ``C:\\x.py``, is not a separator)."""
    module, sep, name = spec.rpartition(":")
    if not sep or not name or any(c in name for c in "/\\") or name.endswith(".py"):
        return spec, None
    return module, name


def import_module(module: str):
    """A module by import name, or a ``.py`` file by path (registered as ``bench_external_<stem>``)."""
    if not module.endswith(".py"):
        return importlib.import_module(module)
    path = Path(module)
    if not path.is_file():
        raise FileNotFoundError(f"no such python file: {path}")
    name = f"bench_external_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(mod)
    return mod


def load_callable(spec: str, option: str, default: str | None = None) -> Callable:
    """``spec`` -> the function; ``default`` names it when the spec has no ``:function`` part (else
    that part is required). Errors name ``option``."""
    module, name = split_spec(spec)
    name = name or default
    if name is None:
        raise ValueError(f"{option} must be 'module:function' or 'file.py:function', got {spec!r}")
    fn = getattr(import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"{option} {spec!r}: {module} defines no function {name!r}")
    return fn
