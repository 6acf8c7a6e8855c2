"""Writing files so that readers never see half of one: atomic replace, the umask's permissions, and a
full disk or a file size limit named as the cause."""
from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from .fields import error_summary

def atomic_write(path: Path, write: Callable[[Path], object], staging: Path | None = None) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the whole new one.
    ``tmp`` is ``<path>.tmp`` beside it, or a file in ``staging`` (same file system) to keep
    half-written files out of a folder that others list while it fills. The file gets the permissions the
    umask gives a new file, whatever ``write`` created it with (safetensors writes 0600: a ComfyUI running as
    another user could not read it). On failure the temporary is removed and the error says why (a full disk,
    by name)."""
    path = Path(path)
    tmp = Path(staging) / f"{path.name}.tmp" if staging is not None else path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        kept = " (the previous version is intact)" if path.exists() else ""
        raise OSError(f"could not write {path}: {_why_write_failed(err, path.parent, written)}{kept}") from None

def _umask() -> int:
    """The process's umask: Linux states it in /proc/self/status; elsewhere it is read by setting it, under a
    lock, which for that instant gives files other threads create the umask 022."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        with _UMASK_LOCK:
            mask = os.umask(0o022)
            os.umask(mask)
        return mask

_UMASK_LOCK = threading.Lock()

def _why_write_failed(err: BaseException, directory: Path, written: int) -> str:
    """torch's zip writer reports a full disk or a file size limit as "unexpected pos": read the cause
    off the disk and the process limits."""
    code = getattr(err, "errno", None)
    free = shutil.disk_usage(directory).free if directory.is_dir() else None
    if free is not None and (code == errno.ENOSPC or "No space left" in str(err) or free < 1 << 20):
        return f"no space left on its disk ({free:,} bytes free)"
    limit = _file_size_limit()
    if limit is not None and (code == errno.EFBIG or written >= limit):
        return f"the file reached the size limit (ulimit -f) of {limit:,} bytes"
    return error_summary(err)

def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft
