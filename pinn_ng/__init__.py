"""pinn-ng: energy natural gradient training of PINNs in JAX (Woodbury, SPRING, Nyström).

Importing the package never changes JAX's global precision; call :func:`enable_x64` for the
paper's float64 setting (the default dtype of every function here).

The package's names are loaded on first use (PEP 562): ``import pinn_ng`` alone does not import
JAX, so the command line and the pipeline's helpers start in a fraction of a second (every
``pinn-ng run`` re-executes itself once, see :mod:`pinn_ng.pipeline.hugepages`).

The library needs only JAX, optax, folx, NumPy and tqdm.  The runtime that runs jobs (the
``pinn-ng`` pipeline commands, the Snakefile, plugins, huge pages) lives in
:mod:`pinn_ng.pipeline` and needs the ``pinn-ng[pipeline]`` extra.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("metrics", "models", "operators", "optim", "problems", "residuals")
_NAMES = {"PrecisionError": "precision", "enable_x64": "precision",
          "x64_enabled": "precision", "limit_blas_threads": "blas"}

__all__ = ["PrecisionError", "enable_x64", "limit_blas_threads", "metrics", "models",
           "operators", "optim", "problems", "residuals", "x64_enabled", "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        if name == "limit_blas_threads":
            try:
                import threadpoolctl  # noqa: F401 - of the pipeline extra
            except ImportError:
                raise ImportError("pinn_ng.limit_blas_threads needs threadpoolctl: pip "
                                  "install 'pinn-ng[pipeline]' (or export "
                                  "OPENBLAS_NUM_THREADS=1)") from None
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
