"""A watcher thread that stops a bench before it runs a shared machine out of memory.

It polls this process's anonymous resident memory (``RssAnon``: what the kernel cannot reclaim, there being no
swap) and the machine's ``MemAvailable`` every ``interval`` seconds, keeps the peaks (``RssAnon``, ``VmRSS``),
and ends the process with exit status 3 and one line on stderr when either crosses its bound: the process's
own memory is tracked as it grows, not checked once at the start. File-backed pages (weights mapped from a
file, see ``bench.reno_models``) count in ``VmRSS`` but not in ``RssAnon``: the kernel writes them back and
drops them under pressure instead of killing a process.

    with MemoryGuard(max_anon_gb=10, min_available_gb=2) as guard:
        run_the_bench()
    print(guard.peak_anon_gb, guard.peak_rss_gb)
"""
from __future__ import annotations

import os
import sys
import threading

from bench.memory import status_gb

EXIT_MEMORY = 3


def available_gb() -> float:
    """The machine's ``MemAvailable`` from /proc/meminfo, in GiB."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2 ** 20


class MemoryGuard:
    """Context manager: a daemon thread watching ``RssAnon`` <= ``max_anon_gb`` and ``MemAvailable`` >=
    ``min_available_gb`` (GiB); on a breach it prints one line naming ``label`` and calls ``os._exit(3)``."""

    def __init__(self, max_anon_gb: float, min_available_gb: float, label: str = "bench", interval: float = 0.2):
        self.max_anon_gb, self.min_available_gb, self.label, self.interval = (max_anon_gb, min_available_gb, label,
                                                                              interval)
        self.peak_anon_gb = self.peak_rss_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="memory-guard")

    def check(self) -> None:
        """One poll: update the peaks, end the process on a breach."""
        anon, rss, free = status_gb("RssAnon"), status_gb("VmRSS"), available_gb()
        self.peak_anon_gb, self.peak_rss_gb = max(self.peak_anon_gb, anon), max(self.peak_rss_gb, rss)
        if anon > self.max_anon_gb or free < self.min_available_gb:
            sys.stderr.write(f"{self.label}: stopped for memory: this process holds {anon:.2f} GiB anonymous "
                             f"({rss:.2f} GiB resident), the machine has {free:.2f} GiB available; bounds: at most "
                             f"{self.max_anon_gb:g} GiB anonymous, at least {self.min_available_gb:g} GiB available "
                             "(a smaller --size, or --max-anon-gb / --min-available-gb)\n")
            sys.stderr.flush()
            os._exit(EXIT_MEMORY)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def __enter__(self) -> "MemoryGuard":
        self.check()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
