"""Timing helpers of the Nyström table (``pinn-ng nystrom-table``) and the benchmarks in
``bench/`` (asv ``time_`` and ``track_`` benchmarks, scripts).

How the benchmarks time, in code:

- compilation happens in *setup*: :func:`compile_jitted` lowers and compiles a ``jax.jit``
  function ahead of time and reports how long that took; the timed calls reuse the compiled
  executable, so neither tracing nor the jit cache lookup is timed;
- every timed call ends with ``jax.block_until_ready`` (JAX dispatch is asynchronous);
- the reported time is the **median** of the repeats (robust to the occasional slow sample
  on a shared machine), with the minimum beside it;
- :func:`interleaved_timings` times several variants *round-robin* (one call of each per round)
  so that background load drifts hit every variant alike: ratios measured that way are the
  numbers to trust on a busy machine.

Peak memory (:func:`peak_memory`), first source that is available:

1. ``"xla"``: XLA's buffer assignment of the compiled executable
   (``compiled.memory_analysis()``: arguments + outputs + temporaries − aliased), i.e. the most
   bytes that executable holds at once.  Per executable, exact for what XLA allocates, and
   available on CPU and GPU alike; it excludes the Python process and JAX runtime overhead.
2. ``"device"``: ``device.memory_stats()["peak_bytes_in_use"]`` (GPU/TPU only; a process-wide
   high-water mark that cannot be reset, so it only bounds the current executable).
3. ``"maxrss"``: ``resource.getrusage`` max RSS of the process (process-wide high-water mark).

``tracemalloc`` is not used: it only sees Python-heap allocations, not XLA's buffers, and would
report next to nothing for a JAX computation.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import jax

MiB = 2.0**20


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples (seconds) of one function, after compilation."""

    samples: tuple

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def repeats(self) -> int:
        return len(self.samples)


def compile_jitted(jitted: Callable, *args):
    """Ahead-of-time compile ``jitted`` (a ``jax.jit`` function) for ``args``.

    Returns ``(compiled, seconds)``; call ``compiled(*args)`` afterwards (same shapes/dtypes).
    """
    if not hasattr(jitted, "lower"):
        raise TypeError(f"expected a jax.jit-wrapped function, got {type(jitted).__name__}")
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def run_once(fn: Callable, *args) -> float:
    """Seconds for one call of ``fn(*args)``, including ``block_until_ready`` of its output."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def interleaved_timings(
    calls: Sequence[Callable[[], object]],
    repeats: int,
    max_seconds: float | None = None,
    min_repeats: int = 3,
    warmup: int = 1,
) -> list[Timing]:
    """Time the zero-argument ``calls`` round-robin; one :class:`Timing` per call.

    ``warmup`` untimed rounds first (allocations, caches).  Then up to ``repeats`` rounds,
    stopping early once the timed rounds took more than ``max_seconds`` in total, but never
    before ``min(min_repeats, repeats)`` rounds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for call in calls:
            jax.block_until_ready(call())
    samples: list[list[float]] = [[] for _ in calls]
    spent = 0.0
    for r in range(repeats):
        for i, call in enumerate(calls):
            samples[i].append(run_once(call))
            spent += samples[i][-1]
        if max_seconds is not None and spent > max_seconds and r + 1 >= min(min_repeats, repeats):
            break
    return [Timing(tuple(s)) for s in samples]


def median_time(call: Callable[[], object], repeats: int, max_seconds: float | None = None,
                min_repeats: int = 3, warmup: int = 1) -> Timing:
    """:func:`interleaved_timings` for a single call."""
    return interleaved_timings([call], repeats, max_seconds, min_repeats, warmup)[0]


def xla_peak_bytes(compiled) -> int | None:
    """Most bytes the compiled executable holds at once, from XLA's buffer assignment."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not implemented on some backends / versions
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return int(total)


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the default device (GPU/TPU), or None (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def maxrss_bytes() -> int:
    """Max resident set size of this process so far (bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def peak_memory(compiled=None) -> tuple[int, str]:
    """``(bytes, source)``; sources in order of preference: "xla", "device", "maxrss"."""
    if compiled is not None:
        b = xla_peak_bytes(compiled)
        if b is not None:
            return b, "xla"
    b = device_peak_bytes()
    if b is not None:
        return b, "device"
    return maxrss_bytes(), "maxrss"


def relative_error(a, b) -> float:
    """max|a − b| / max|b| (a scale-free check of a fast path against a reference)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)
