"""The pipeline's persistent compilation cache: one directory that every job's JAX shares."""

from __future__ import annotations

import os

#: Size cap of the persistent compilation cache (JAX evicts the least recently used entries).
COMPILATION_CACHE_MAX_BYTES = 4 * 2**30


def compilation_cache_env(config: dict) -> dict[str, str]:
    """Environment that points every job's JAX at the preset's persistent compilation
    cache (``compilation_cache``; none if it is null).

    Runs of one grid compile the same programs (replicates, the same optimizer at one
    size): a process that finds its executables there skips XLA's compilation.
    Compilation is never inside the timed steps, so only ``compile_seconds`` changes.  Every
    entry is kept, however fast it compiled; the size cap turns on JAX's file lock, so that
    jobs running side by side never read a half-written entry.
    """
    where = config.get("compilation_cache")
    if not where:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(os.path.expanduser(str(where))),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(COMPILATION_CACHE_MAX_BYTES)}


def compilation_cache_error(config: dict) -> str | None:
    """Why the compilation cache directory cannot be used (one line), or None.  Creates
    it: call before the first job, never in a dry run.  (JAX itself would only warn, in
    every job, and compile without it.)"""
    env = compilation_cache_env(config)
    if not env:
        return None
    where = env["JAX_COMPILATION_CACHE_DIR"]
    fix = "choose a writable directory, or --config compilation_cache=null"
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        return f"compilation_cache {where!r} cannot be created ({err.strerror}): {fix}"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"compilation_cache {where!r} is not writable: {fix}"
    return None
