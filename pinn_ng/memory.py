"""A memory guard: will the compiled training step fit in the memory the device has left?

XLA knows, once a function is compiled, how many bytes its arguments, outputs and
temporaries take (``compiled.memory_analysis()``).  Comparing that with what the device
has left (``MemAvailable`` of ``/proc/meminfo`` and the cgroup's limit on a CPU,
``memory_stats()`` on a GPU) before the first step turns an out-of-memory kill deep inside
XLA (or by the kernel's OOM killer, which leaves no message at all) into one line.

The estimate is of the step alone: evaluation on the fixed evaluation set and the Python
process itself come on top, so the guard only refuses what surely cannot fit.
"""

from __future__ import annotations

from pathlib import Path

GIB = 1024.0 ** 3


class MemoryGuardError(RuntimeError):
    """The compiled step needs more memory than the device has available (one line)."""


def estimate(compiled) -> dict | None:
    """Bytes of the compiled step: arguments, outputs, temporaries and their total, or None when
    the backend does not report them.  Outputs that alias (donated) arguments count once."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis
        return None
    if ma is None:
        return None
    args = int(getattr(ma, "argument_size_in_bytes", 0))
    outs = int(getattr(ma, "output_size_in_bytes", 0))
    temps = int(getattr(ma, "temp_size_in_bytes", 0))
    alias = int(getattr(ma, "alias_size_in_bytes", 0))
    return {"argument_bytes": args, "output_bytes": outs, "temp_bytes": temps,
            "alias_bytes": alias, "total_bytes": args + outs - alias + temps}


def _meminfo_available(path="/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """What the cgroup (a SLURM job's ``--mem``, a container's limit) still allows, or None."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max":
                return None
            cap, used = int(text), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap >= 1 << 60:  # cgroup v1's "no limit"
            return None
        return max(cap - used, 0)
    return None


def available(device=None) -> tuple[int | None, str]:
    """Bytes ``device`` (default: JAX's first device) can still allocate, and where that number
    comes from; ``(None, why)`` when it cannot be told."""
    import jax

    device = device if device is not None else jax.devices()[0]
    if device.platform == "cpu":
        found = [(b, src) for b, src in ((_meminfo_available(), "MemAvailable"),
                                         (_cgroup_available(), "cgroup memory limit"))
                 if b is not None]
        if not found:
            return None, "neither /proc/meminfo nor a cgroup limit is readable"
        return min(found)
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory_stats
        stats = {}
    limit = stats.get("bytes_limit")
    if limit is None:
        return None, f"{device.platform} reports no memory_stats()"
    return int(limit) - int(stats.get("bytes_in_use", 0)), f"{device.platform} memory_stats()"


def check(compiled, *, enabled: bool = True, hint: str = "", device=None,
          available_bytes: int | None = None) -> dict:
    """The step's estimate and the memory available, as a dict for the run record; raises
    :class:`MemoryGuardError` (one line: estimate, available, ``hint``) when the estimate
    exceeds what is available and ``enabled``.  ``available_bytes`` overrides the device's."""
    est = estimate(compiled)
    if available_bytes is not None:
        avail, source = int(available_bytes), "given"
    else:
        avail, source = available(device)
    out = {**(est or {}), "available_bytes": avail, "available_source": source,
           "checked": bool(enabled and est is not None and avail is not None)}
    if out["checked"] and est["total_bytes"] > avail:
        raise MemoryGuardError(
            f"the compiled training step needs about {est['total_bytes'] / GIB:.2f} GiB "
            f"(arguments {est['argument_bytes'] / GIB:.2f}, outputs "
            f"{est['output_bytes'] / GIB:.2f}, temporaries {est['temp_bytes'] / GIB:.2f} "
            f"GiB) but only {avail / GIB:.2f} GiB are available ({source})"
            + (f"; to shrink it: {hint}" if hint else ""))
    return out


def describe(est: dict | None) -> str:
    if not est:
        return "no estimate (the backend reports no memory analysis)"
    return (f"{est['total_bytes'] / GIB:.3f} GiB (arguments {est['argument_bytes'] / GIB:.3f}, "
            f"outputs {est['output_bytes'] / GIB:.3f}, temporaries "
            f"{est['temp_bytes'] / GIB:.3f})")



def share_device(runs: int, environ=None) -> float | None:
    """Let ``runs`` processes share one GPU: each gets ``0.9 / runs`` of its memory
    (``XLA_PYTHON_CLIENT_MEM_FRACTION``) instead of XLA's default pre-allocation of 75 %,
    which would leave the second process nothing.  Call before JAX starts its backend; a
    fraction or ``XLA_PYTHON_CLIENT_PREALLOCATE`` the user set is kept.  Returns the fraction
    set, or None."""
    import os

    environ = os.environ if environ is None else environ
    if runs <= 1 or "XLA_PYTHON_CLIENT_MEM_FRACTION" in environ or \
            "XLA_PYTHON_CLIENT_PREALLOCATE" in environ:
        return None
    fraction = round(0.9 / runs, 3)
    environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(fraction)
    return fraction
