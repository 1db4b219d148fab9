"""Wall-clock timing: median of several runs after a warm-up, and round-robin (interleaved)
timing of several functions so that machine drift hits all of them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def timeit(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> dict:
    """Median/min/max wall time of `fn()` over `reps` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return summary(times)


def summary(times: Sequence[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "runs": [round(t, 5) for t in times]}


def interleaved(fns: dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Time several functions round-robin (A B C, A B C, ...) so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, reps)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: summary(v) for k, v in times.items()}

