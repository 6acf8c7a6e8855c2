"""Subcommand dispatch shared by ``python -m train`` and ``python -m train bench``."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def dispatch(argv: Sequence[str] | None, usage: str, commands: Mapping[str, str | Callable], package: str):
    """Run ``commands[argv[0]]`` on the rest of ``argv``: a callable, or a module (relative to
    ``package``) whose ``main(argv)`` is imported only when chosen. Prints ``usage`` for -h/none."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return None
    command, rest = argv[0], argv[1:]
    if command not in commands:
        raise SystemExit(f"unknown command {command!r}\n{usage}")
    target = commands[command]
    run = target if callable(target) else importlib.import_module(target, package).main
    return run(rest)
