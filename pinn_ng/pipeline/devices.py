"""Which device a run may start on: ``device=gpu`` refuses a machine without a GPU.

The paper preset asks for ``device: gpu``.  Without this check, a forgotten ``jax[cuda12]``
install (or a job that landed on a CPU node) would train the paper grid on a CPU for weeks and
record CPU timings as if they were the paper's.  The check is one line, made before anything
is compiled or written: by ``pinn-ng run --device gpu`` (every pipeline run), by
``pinn-ng nystrom-table --device gpu``, and by the Snakefile before the first job of a local
run.  ``pinn-ng plan`` and dry runs never check: a login node has no GPU.
"""

from __future__ import annotations

from .errors import UserError

DEVICES = ("any", "cpu", "gpu")


def require(device: str) -> str:
    """Raise :class:`UserError` unless ``jax.devices()`` offers ``device``; return the platform.

    ``"any"`` accepts whatever JAX sees; ``"gpu"`` needs a CUDA or ROCm device (JAX's
    platform ``"gpu"``, or ``"cuda"``/``"rocm"``); ``"cpu"`` needs JAX's default backend to be
    the CPU (otherwise the run would silently time the accelerator).
    """
    if device not in DEVICES:
        raise UserError(f"device {device!r} is not one of {list(DEVICES)}")
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    seen = "[" + ", ".join(map(repr, devices[:4])) + (", ...]" if len(devices) > 4 else "]")
    if device == "gpu" and platform not in ("gpu", "cuda", "rocm"):
        raise UserError(
            f"device=gpu, but JAX sees no GPU (jax.devices(): {seen}); install JAX for your "
            "accelerator (e.g. pip install -U \"jax[cuda12]==0.10.2\") and run on a GPU node, "
            "or set device=any to run on this machine")
    if device == "cpu" and platform != "cpu":
        raise UserError(f"device=cpu, but JAX's default device is {seen}; set "
                        "JAX_PLATFORMS=cpu or device=any")
    return platform
