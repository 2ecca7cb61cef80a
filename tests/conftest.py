import jax
import pytest

import pinn_ng

# The tests compare against float64 references; switch x64 on explicitly (never at import).
pinn_ng.enable_x64()
# One LAPACK thread: OpenBLAS's pool otherwise spins against XLA's (see pinn_ng/blas.py).
pinn_ng.limit_blas_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark_test)


_JITTED = {}


def _jit(fn):
    """jax.jit, memoised per function so that repeated seeds reuse one compilation."""
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Run a numerics test jitted and eagerly (chex's ``variants`` idea): a function that
    wraps ``opt.update`` (batch passed as a keyword: a pytree, traced by jax.jit)."""
    return _jit if request.param == "jit" else (lambda fn: fn)
