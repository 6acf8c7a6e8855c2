"""What every command line of the project (``python -m latent_clip``, ``python -m train ...``) does with
its subcommands (:func:`dispatch`) and with an error: one line on stderr saying what was wrong, where and what
was expected, and exit status 2. The traceback is printed only with ``--debug`` (accepted anywhere on the
command line)."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence

from .fields import one_line

DEBUG_FLAG = "--debug"
ERROR_EXIT = 2
# Errors whose message is written for the user (the project's own errors derive from these); any
# other exception is a surprise, so its type is named too.
EXPLAINED = (ValueError, OSError, RuntimeError)


def describe(err: BaseException) -> str:
    """``err`` as one line of at most :data:`~latent_clip.fields.MAX_ERROR_CHARS` characters (for an error
    re-raised from a DataLoader worker, the worker's own line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.startswith("Caught ") and "Original Traceback" in str(err):
        text = lines[-1].removeprefix(f"{type(err).__name__}: ")
    text = text if isinstance(err, EXPLAINED) and text else f"{type(err).__name__}: {text}".rstrip(": ")
    return one_line(text)


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` (``--debug`` removed); 0 when it returns, :data:`ERROR_EXIT` after printing
    one line for an exception (re-raised with ``--debug``), 130 on Ctrl-C. ``SystemExit`` (argparse)
    passes through."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    try:
        main([a for a in argv if a != DEBUG_FLAG])
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line; --debug shows the traceback
        if debug:
            raise
        print(f"error: {describe(err)}", file=sys.stderr, flush=True)
        return ERROR_EXIT
    return 0


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
