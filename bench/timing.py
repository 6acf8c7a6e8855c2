"""One timing rule for every bench: paths timed in interleaved repeats on the CPU time this process spends
(``time.process_time``: user + system of all its threads), each ratio given as the median of the per-repeat
ratios with its spread (min-max) over repeats.

Why CPU time: a busy neighbour (another process on the same cores) stretches wall-clock time but not the
CPU seconds this process's own work takes, so ratios hold on a shared machine. Why interleaved: slow drifts
(thermal, frequency, page cache) hit every path alike within a repeat. On CUDA the work is not on this
process's CPU: :func:`cuda_clock` times the device (wall clock after a synchronise).

    with busy_neighbour():   # a CPU-burning process beside the bench, for the under-load check
        samples = interleaved({"pixel": f, "latent": g}, repeats=5)
    print(format_ratio(ratio(samples["pixel"], samples["latent"])))
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

Clock = Callable[[], float]


def cuda_clock() -> float:
    """Wall seconds after ``torch.cuda.synchronize()``: device time for work queued on CUDA."""
    import torch
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_for(device: str) -> Clock:
    """This process's CPU seconds on the CPU; synchronised wall seconds on CUDA."""
    return cuda_clock if str(device).startswith("cuda") else time.process_time


def interleaved(paths: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Clock = time.process_time) -> dict[str, list[float]]:
    """Seconds of each call of each path: ``warmup`` untimed rounds, then ``repeats`` rounds, each calling
    every path once in turn. Returns ``{name: [seconds per repeat]}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return samples


@dataclass(frozen=True)
class Ratio:
    """``median`` of the per-repeat ratios numerator/denominator, and their ``low``-``high`` range."""

    median: float
    low: float
    high: float
    repeats: int

    @property
    def spread(self) -> float:
        """(high - low) / median: the relative width of the range."""
        return (self.high - self.low) / self.median


def ratio(numerator: list[float], denominator: list[float]) -> Ratio:
    """Per-repeat ratios of two paths timed in the same :func:`interleaved` run."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"ratio needs two equal, non-empty sample lists, got {len(numerator)} and {len(denominator)}")
    per_repeat = [a / b for a, b in zip(numerator, denominator)]
    return Ratio(statistics.median(per_repeat), min(per_repeat), max(per_repeat), len(per_repeat))


def format_ratio(r: Ratio) -> str:
    """``"199.3x (195.1-203.0, 5 repeats)"``."""
    return f"{r.median:.1f}x ({r.low:.1f}-{r.high:.1f}, {r.repeats} repeats)"


@contextlib.contextmanager
def busy_neighbour() -> Iterator[subprocess.Popen]:
    """A process spinning a busy loop for as long as the block runs, pinned to the last CPU this process may
    use (Linux); the load a shared machine puts beside a bench."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(burner.pid, {max(os.sched_getaffinity(0))})
    try:
        yield burner
    finally:
        burner.kill()
        burner.wait()
