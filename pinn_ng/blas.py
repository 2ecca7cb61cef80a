"""Thread count of the CPU LAPACK/BLAS that JAX's CPU backend calls for factorisations.

On the CPU, jaxlib runs Cholesky, triangular solves, QR, SVD and eigh through SciPy's
OpenBLAS, while XLA runs everything else on its own thread pool.  When both pools want every
core, OpenBLAS's threads spin against XLA's, and a factorisation inside a jitted step runs
many times slower than with one OpenBLAS thread (``bench/optim_speed.py`` shows the effect on
whole ENGD-W steps).
Nothing changes at import: the CLI, the benchmarks and the tests call
:func:`limit_blas_threads` explicitly, and users of the library on a CPU may do the same (or
export ``OPENBLAS_NUM_THREADS=1`` before starting Python).
"""

from __future__ import annotations

_LIMITER = None


def limit_blas_threads(n: int = 1):
    """Limit the process's BLAS/LAPACK thread pools (OpenBLAS, MKL, ...) to ``n`` threads.

    Uses ``threadpoolctl``, so it works after NumPy/SciPy are loaded.  Returns the limiter;
    ``limiter.restore_original_limits()`` undoes it.
    """
    global _LIMITER
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive int, got {n!r}")
    from threadpoolctl import threadpool_limits

    _LIMITER = threadpool_limits(limits=n, user_api="blas")
    return _LIMITER
