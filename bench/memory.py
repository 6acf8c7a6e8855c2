"""Process memory from Linux's /proc, for benches and tests that measure it (this process or a server):
the resident set (``VmRSS``), its high-water mark (``VmHWM``) and a reset of that mark."""
from __future__ import annotations


def status_gb(field: str, pid: int | str = "self") -> float:
    """``field`` (``VmRSS`` or ``VmHWM``) of process ``pid`` from /proc/<pid>/status, in GiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2 ** 20


def reset_peak(pid: int | str = "self") -> None:
    """Restart the high-water mark ``VmHWM`` of process ``pid`` from its current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
