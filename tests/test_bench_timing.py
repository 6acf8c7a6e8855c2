"""bench/timing.py: interleaved CPU-time repeats, per-repeat ratios with their spread, and the busy neighbour."""
import time

import pytest

from bench.timing import busy_neighbour, format_ratio, interleaved, ratio


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_interleaved_calls_each_path_once_per_repeat_in_turn():
    calls = []
    samples = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}


def test_ratio_is_the_median_of_per_repeat_ratios_with_its_range():
    r = ratio([4.0, 9.0, 6.0], [2.0, 3.0, 1.0])  # per repeat: 2, 3, 6
    assert (r.median, r.low, r.high, r.repeats) == (3.0, 2.0, 6.0, 3)
    assert r.spread == pytest.approx(4 / 3)
    assert format_ratio(r) == "3.0x (2.0-6.0, 3 repeats)"
    with pytest.raises(ValueError, match="equal, non-empty"):
        ratio([1.0], [1.0, 2.0])


def test_cpu_time_ratio_ignores_sleeping_and_a_busy_neighbour():
    """Sleep costs no CPU time, so a path that sleeps 50 ms beside 20 ms of work still times as the work; the
    ratio of 40 ms to 20 ms of spinning stays 2 beside a CPU burner. Measured: 2.0 (range 2.0-2.0) in 6 runs
    beside a burner on an idle 2-core machine; the bound allows 15 % for a machine busier than that."""
    paths = {"long": lambda: spin(0.04), "short": lambda: (spin(0.02), time.sleep(0.05))}
    with busy_neighbour() as burner:
        samples = interleaved(paths, repeats=5)
        assert burner.poll() is None
    assert burner.poll() is not None  # killed when the block ends
    assert ratio(samples["long"], samples["short"]).median == pytest.approx(2.0, rel=0.15)
