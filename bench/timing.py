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

A bench script adds :func:`add_timing_options` to its parser and hands its measurement (a function printing its
table and returning its time ratios) to :func:`run_measurement`: alone, beside a burner, or both, compared
(``--load-check``: exit 1 when a ratio moves by more than :data:`LOAD_TOLERANCE`).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

Clock = Callable[[], float]
LOAD_TOLERANCE = 0.10  # issue 25: a ratio timed alone and beside a CPU burner agrees within 10 %


def cuda_clock() -> float:
    """Wall seconds after ``torch.cuda.synchronize()``: device time for work queued on CUDA."""
    import torch
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_for(device: str) -> Clock:
    """This process's CPU seconds on the CPU; synchronised wall seconds on CUDA."""
    return cuda_clock if str(device).startswith("cuda") else time.process_time


def interleaved(paths: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Clock = time.process_time, min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each path: ``warmup`` untimed rounds, then ``repeats`` rounds, each timing every path
    in turn. Returns ``{name: [seconds per call, one per repeat]}``.

    With ``min_seconds`` (and ``warmup`` >= 1) a path whose warm-up call took less is called
    ``ceil(min_seconds / warm-up seconds)`` times per timing, and the timing divided by that count: a
    millisecond-long path is otherwise at the mercy of a single page fault or scheduler tick."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    calls = dict.fromkeys(paths, 1)
    for _ in range(warmup):
        for name, fn in paths.items():
            start = clock()
            fn()
            took = clock() - start
            if min_seconds > 0:
                calls[name] = max(1, math.ceil(min_seconds / max(took, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = clock()
            for _ in range(calls[name]):
                fn()
            samples[name].append((clock() - start) / calls[name])
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
    """``"199.3x (195.1-203.0, 5 repeats)"``; two decimals below 10x (``"1.21x (1.18-1.25, 5 repeats)"``)."""
    d = 2 if r.median < 10 else 1
    return f"{r.median:.{d}f}x ({r.low:.{d}f}-{r.high:.{d}f}, {r.repeats} repeats)"


def ceiling_note(time_ratio: Ratio, flop_ratio: float, rates: dict[str, float]) -> str | None:
    """A line explaining a time ratio (numerator path / denominator path) above its FLOP ratio, else None.
    ``rates`` holds GFLOP per second of the numerator's path then the denominator's: the time ratio is the FLOP
    ratio times denominator rate / numerator rate, so it passes its FLOP ratio only when the cheaper-in-time path
    gets more FLOPs done per second, or by the scatter of the repeats where the two rates are close."""
    if time_ratio.median <= flop_ratio:
        return None
    (numerator, slow), (denominator, fast) = rates.items()
    why = (f"the FLOP ratio lies within the range over repeats ({time_ratio.low:.1f}-{time_ratio.high:.1f}): the "
           "excess is their scatter" if time_ratio.low <= flop_ratio else "its kernels got more done per second")
    return (f"time ratio above its FLOP ratio ({flop_ratio:.1f}x): {denominator} ran at {fast:.1f} GFLOP/s, "
            f"{numerator} at {slow:.1f}; {why}")


@contextlib.contextmanager
def busy_neighbour() -> Iterator[subprocess.Popen]:
    """A process spinning a busy loop for as long as the block runs, pinned to the last CPU this process may
    use (Linux); the load a shared machine puts beside a bench. It also stops by itself once this process is
    gone (its parent changes), so a killed bench leaves no burner behind."""
    spin = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    pass"
    burner = subprocess.Popen([sys.executable, "-c", spin, str(os.getpid())])
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(burner.pid, {max(os.sched_getaffinity(0))})
    try:
        yield burner
    finally:
        burner.kill()
        burner.wait()


def add_timing_options(parser: argparse.ArgumentParser, repeats: int = 3, min_seconds: float | None = None) -> None:
    """``--repeats``, ``--threads`` and the under-load options every timing bench takes; ``--min-seconds`` for a
    bench that passes it to :func:`interleaved` (give its default)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved timed repeats after one warm-up "
                        "round: each ratio is the median of the per-repeat ratios, with their range "
                        f"(default {repeats})")
    if min_seconds is not None:
        parser.add_argument("--min-seconds", type=float, default=min_seconds, help="call a path that took less "
                            "in the warm-up round several times within each timing, up to this many CPU seconds "
                            f"(default {min_seconds:g})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU seconds sum over "
                        "threads, so more threads add their spinning and synchronisation to the time)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--beside-burner", action="store_true", help="time beside a CPU-burning process")
    load.add_argument("--load-check", action="store_true", help="time alone, then beside a CPU-burning process, and "
                      f"exit 1 if a time ratio moves by more than {LOAD_TOLERANCE * 100:.0f} %%")


def load_differences(alone: dict[str, Ratio], beside: dict[str, Ratio]) -> dict[str, float]:
    """|beside / alone - 1| of each ratio's median."""
    return {name: abs(beside[name].median / r.median - 1) for name, r in alone.items()}


def run_measurement(measure: Callable[[], dict[str, Ratio]], args: argparse.Namespace) -> dict[str, Ratio]:
    """``measure()`` alone, beside :func:`busy_neighbour` (``args.beside_burner``), or both
    (``args.load_check``: prints the two ratios and their difference, exits 1 above :data:`LOAD_TOLERANCE`)."""
    if args.beside_burner:
        with busy_neighbour():
            return measure()
    if not args.load_check:
        return measure()
    print("== alone ==")
    alone = measure()
    print("== beside a CPU burner ==")
    with busy_neighbour():
        beside = measure()
    differences = load_differences(alone, beside)
    print(f"== load check (agree within {LOAD_TOLERANCE:.0%}) ==")
    for name, difference in differences.items():
        print(f"{name:<52} alone {format_ratio(alone[name]):<30} beside a burner {format_ratio(beside[name]):<30} "
              f"{difference:6.1%}")
    worst = max(differences, key=differences.get)
    if differences[worst] > LOAD_TOLERANCE:
        sys.exit(f"load check failed: {worst} moved {differences[worst]:.1%} beside a CPU burner, "
                 f"expected at most {LOAD_TOLERANCE:.0%}")
    return alone
