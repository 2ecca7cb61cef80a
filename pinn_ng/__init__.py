"""pinn-ng: energy natural gradient training of PINNs in JAX (Woodbury, SPRING, Nyström).

Importing the package never changes JAX's global precision; call :func:`enable_x64` for the
paper's float64 setting (the default dtype of every function here).
"""

from . import metrics, models, operators, optim, problems, residuals
from .blas import limit_blas_threads
from .precision import PrecisionError, enable_x64, x64_enabled

__version__ = "0.1.0"

__all__ = [
    "PrecisionError",
    "enable_x64",
    "limit_blas_threads",
    "metrics",
    "models",
    "operators",
    "optim",
    "problems",
    "residuals",
    "x64_enabled",
    "__version__",
]
