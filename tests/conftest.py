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
