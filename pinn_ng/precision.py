"""Explicit floating-point precision.

The paper trains every problem in float64, and the correctness tests compare fast paths with
dense references at 1e-10 relative, which float32 cannot resolve.  JAX only produces float64
arrays once ``jax_enable_x64`` is switched on, a process-wide flag.  Importing :mod:`pinn_ng`
never flips it: the user (or our CLI and tests) calls :func:`enable_x64` once at start-up.
Library functions take a ``dtype`` (default float64) and raise :class:`PrecisionError` if
float64 is asked for while x64 is off, instead of silently computing in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_DTYPE = jnp.float64

_ALIASES = {
    "float64": jnp.float64,
    "f64": jnp.float64,
    "double": jnp.float64,
    "float32": jnp.float32,
    "f32": jnp.float32,
    "single": jnp.float32,
}


class PrecisionError(RuntimeError):
    """float64 was requested while JAX's x64 mode is disabled."""


def enable_x64(enabled: bool = True) -> None:
    """Switch JAX's process-wide float64 support on (or off).  Call once, before creating arrays."""
    jax.config.update("jax_enable_x64", bool(enabled))


def x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def resolve_dtype(dtype=None):
    """Normalise ``dtype`` (None, a string or a numpy/jax dtype) and check it can be honoured."""
    if dtype is None:
        dtype = DEFAULT_DTYPE
    if isinstance(dtype, str):
        try:
            dtype = _ALIASES[dtype.lower()]
        except KeyError:
            raise ValueError(
                f"unknown dtype {dtype!r}; valid: {sorted(_ALIASES)}"
            ) from None
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if dtype == jnp.dtype(jnp.float64) and not x64_enabled():
        raise PrecisionError(
            "float64 requested but JAX x64 mode is off. Call pinn_ng.enable_x64() once at "
            "start-up (the paper's setting), or pass dtype='float32' explicitly."
        )
    return dtype
