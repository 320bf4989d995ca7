"""Reproducible wall-clock timing for the benchmark scripts: warm-up, repeats, median and spread.

A single cold call of a millisecond job measures page faults, lazy initialisation and whatever else the machine is
doing; these helpers instead

- warm up (the first call is run and discarded),
- size each timed sample to at least `min_seconds` by running the job `loops` times in it (per-call time =
  sample / loops), so timer resolution and scheduler noise are small against the sample,
- repeat `repeats` samples and report the median with the min-max spread,
- and, for a comparison, interleave the two jobs sample by sample (load on a shared machine falls on both
  alike) and report the median and spread of the per-sample ratios.

    from timing import measure, compare
    t = measure(fn)                 # Timing: t.median, t.low, t.high (seconds per call), str(t) "12.3 ms (11.9-13.0)"
    a, b, r = compare(slow, fast)   # two Timings and the Ratio slow/fast, interleaved
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIN_SECONDS = 0.05  # one timed sample runs at least this long
REPEATS = 5


def seconds(value: float) -> str:
    """A duration with a unit that keeps three significant digits."""
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


@dataclass
class Timing:
    """Seconds per call: median and min-max over `samples` (each the mean of `loops` back-to-back calls)."""

    samples: list[float]
    loops: int
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def __str__(self) -> str:
        return f"{seconds(self.median)} ({seconds(self.low)}-{seconds(self.high)})"


@dataclass
class Ratio:
    """Per-sample ratios of two interleaved timings: median and min-max."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        return f"{self.median:.3g}x ({min(self.values):.3g}-{max(self.values):.3g})"


def _loops(fn: Callable[[], Any], min_seconds: float) -> tuple[int, Any]:
    """Warm-up call (discarded), then the number of calls that makes one sample last `min_seconds`."""
    t0 = time.perf_counter()
    result = fn()
    once = time.perf_counter() - t0
    if once < 4 * min_seconds:  # a short job: calibrate on a warm call (a long one is timed one call a sample)
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-9)
    return max(1, int(-(-min_seconds // once))), result


def _sample(fn: Callable[[], Any], loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops


def measure(
    fn: Callable[[], Any], *, repeats: int = REPEATS, min_seconds: float = MIN_SECONDS, warmup: bool = True
) -> Timing:
    """Time `fn()`: a warm-up call (skipped with `warmup=False`, for calls of many seconds, which then use one
    call per sample), then `repeats` samples of `loops` calls each, `loops` set so a sample lasts >= `min_seconds`.
    `Timing.result` is the warm-up call's (or the first sample's) return value."""
    if warmup:
        loops, result = _loops(fn, min_seconds)
        return Timing([_sample(fn, loops) for _ in range(repeats)], loops, result)
    t0 = time.perf_counter()
    result = fn()
    samples = [time.perf_counter() - t0] + [_sample(fn, 1) for _ in range(repeats - 1)]
    return Timing(samples, 1, result)


def compare(
    slow: Callable[[], Any],
    fast: Callable[[], Any],
    *,
    repeats: int = REPEATS,
    min_seconds: float = MIN_SECONDS,
) -> tuple[Timing, Timing, Ratio]:
    """Time two jobs interleaved (warm-up each, then `repeats` rounds of one sample of each), with the per-round
    ratios `slow / fast`."""
    loops_s, res_s = _loops(slow, min_seconds)
    loops_f, res_f = _loops(fast, min_seconds)
    a, b = [], []
    for _ in range(repeats):
        a.append(_sample(slow, loops_s))
        b.append(_sample(fast, loops_f))
    return Timing(a, loops_s, res_s), Timing(b, loops_f, res_f), Ratio([x / y for x, y in zip(a, b, strict=True)])
