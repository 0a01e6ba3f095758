"""The one timing loop of the benchmarks: repeated passes over the same calls, summarised as the median over
passes of each pass's percentiles (p50, p99), so a burst of load from another process moves one pass, not the
figure. Each call's CPU time (the process's, `time.process_time`) is recorded beside its wall time."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vestis.errors import VestisError

WARMUP = 20  # untimed calls before the first pass


@dataclass(frozen=True)
class Timings:
    """Seconds per call: one row per pass, one column per input (in input order)."""

    seconds: np.ndarray
    results: list = field(default_factory=list)  # what the calls of the first pass returned
    # this process's CPU seconds per call (all its threads), same shape as `seconds`, where measured: on a machine
    # shared with other jobs, wall time counts the waits for a core and CPU time does not
    cpu_seconds: np.ndarray | None = None

    def per_pass_ms(self, percentile: float) -> np.ndarray:
        """Each pass's `percentile` (e.g. 50, 99) of the call times, in milliseconds."""
        return np.percentile(self.seconds, percentile, axis=1) * 1000.0

    def ms(self, percentile: float) -> float:
        """The median over passes of each pass's `percentile`, in milliseconds."""
        return float(np.median(self.per_pass_ms(percentile)))

    def cpu_ms(self, percentile: float) -> float:
        """As `ms`, of the CPU time per call (NaN where it was not measured)."""
        if self.cpu_seconds is None:
            return float("nan")
        return float(np.median(np.percentile(self.cpu_seconds, percentile, axis=1) * 1000.0))


def time_calls(call: Callable, inputs: Sequence, repeats: int, warmup: int = WARMUP,
               before: Callable | None = None, after_pass: Callable[[int, np.ndarray], None] | None = None) -> Timings:
    """Time `call(x)` for every x of `inputs`, one call at a time, in `repeats` passes after `warmup` untimed
    calls (on the first inputs). `before(x)`, when given, runs untimed before each timed call (e.g. clearing
    a folder the call fills); `after_pass(r, seconds)` sees each finished pass (progress logs)."""
    if repeats < 1:
        raise VestisError(f"repeats must be at least 1, got {repeats}")
    for x in inputs[:warmup]:
        call(x)
    seconds = np.empty((repeats, len(inputs)))
    cpu = np.empty((repeats, len(inputs)))
    results = []
    for r in range(repeats):
        for i, x in enumerate(inputs):
            if before is not None:
                before(x)
            c = time.process_time()
            t = time.perf_counter()
            out = call(x)
            seconds[r, i] = time.perf_counter() - t
            cpu[r, i] = time.process_time() - c
            if r == 0:
                results.append(out)
        if after_pass is not None:
            after_pass(r, seconds[r])
    return Timings(seconds, results, cpu)
