"""``pinn-ng nystrom-table``: standard vs GPU-efficient Nyström, time and memory (paper app. B).

For each batch size N and sketch fraction ℓ/N: the kernel K = JJᵀ of the problem's network at
initialisation on one batch (N_Ω : N_∂Ω as in the paper's batch), then the time to build each
Nyström approximation and apply (K̂ + λI)⁻¹ to one vector, and the memory XLA reserves for it.

- Time: the median of ``repeats`` calls of the compiled function (compiled first, not timed),
  each up to ``block_until_ready``.
- Memory (``*_mib``): the peak memory one call adds on top of its inputs.  On Linux it is
  measured: each variant runs in a fresh child process that loads K, compiles, resets the
  kernel's resident-set high-water mark (``/proc/self/clear_refs``), calls once and reports
  VmHWM − VmRSS.  That sees everything the call touches, the LAPACK workspaces of QR and SVD
  included, which XLA's buffer assignment (``compiled.memory_analysis()``) does not: on the
  CPU the latter reports the same bytes for both variants.  Elsewhere the XLA figure is used
  (column ``memory_source`` says which).  The paper's numbers are CUDA peak allocations
  including K itself, so compare ratios rather than absolute MiB.
"""

from __future__ import annotations

import statistics
import time

COLUMNS = ["N", "fraction", "sketch_size", "damping", "standard_seconds", "gpu_seconds",
           "speedup", "standard_mib", "gpu_mib", "memory_source", "backend", "device_kind"]


def _mib(compiled) -> float:
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - getattr(m, "alias_size_in_bytes", 0))
    return total / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _solver(variant: str, n: int, ell: int, damping: float):
    from ..optim import solvers

    def standard(k, g, key):
        return solvers.nystrom_standard(lambda v: k @ v, n, ell, key, k.dtype).solve(g, damping)

    def gpu(k, g, key):
        return solvers.nystrom_gpu(lambda v: k @ v, n, ell, key, k.dtype, damping).solve(g)

    return {"standard": standard, "gpu": gpu}[variant]


def _child_peak_mib(variant: str, kernel_path: str, ell: int, damping: float) -> float:
    """In this (fresh) process: load K, compile, reset VmHWM, call once; peak MiB added."""
    import jax
    import numpy as np

    from .. import enable_x64, limit_blas_threads

    k_np = np.load(kernel_path)
    if k_np.dtype == np.float64:
        enable_x64()
    limit_blas_threads(1)
    k = jax.numpy.asarray(k_np)
    del k_np
    n = k.shape[0]
    g = jax.random.normal(jax.random.PRNGKey(2), (n,), dtype=k.dtype)
    key = jax.random.PRNGKey(3)
    compiled = jax.jit(_solver(variant, n, ell, damping)).lower(k, g, key).compile()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size to the current one
    base = _status_kib("VmRSS")
    jax.block_until_ready(compiled(k, g, key))
    return (_status_kib("VmHWM") - base) / 1024


def _measured_mib(variant: str, kernel_path: str, ell: int, damping: float) -> float | None:
    """Peak MiB of one call in a fresh child process (Linux), or None where unsupported."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = ("import sys; from pinn_ng.pipeline.nystrom_table import _child_peak_mib as f; "
            "print(f(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))")
    try:
        out = subprocess.run([sys.executable, "-c", code, variant, kernel_path, str(ell),
                              repr(damping)], check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return None


def _time(compiled, args, repeats: int) -> float:
    import jax

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel(problem_name: str, n: int, widths=None, dtype="float64", seed: int = 0):
    """K = JJᵀ (N×N) of the problem's net (model seed 1) on a batch of N points."""
    import jax

    from .. import models, problems
    from ..residuals import ResidualFn

    problem = problems.get(problem_name)
    n_b = max(1, round(n * problem.n_boundary / (problem.n_interior + problem.n_boundary)))
    init, apply = models.mlp(widths or problem.widths, dtype=dtype)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(seed), n - n_b, n_b, dtype)
    jac = ResidualFn(problem, apply).jacobian(params, batch)
    return jax.block_until_ready(jac @ jac.T)


def table(problem: str, n: list, fractions: list, damping: float, widths=None,
          repeats: int = 5, dtype="float64", log=print) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from .. import enable_x64

    if dtype == "float64":
        enable_x64()
    import os
    import tempfile

    import numpy as np

    rows = []
    dev = jax.devices()[0]
    tmp = tempfile.mkdtemp(prefix="nystrom_table_")
    for size in n:
        size = int(size)
        k = kernel(problem, size, widths, dtype)
        kernel_path = os.path.join(tmp, f"K_{size}.npy")
        np.save(kernel_path, np.asarray(k))
        g = jax.random.normal(jax.random.PRNGKey(2), (size,), dtype=k.dtype)
        key = jax.random.PRNGKey(3)
        for frac in fractions:
            ell = max(1, int(round(float(frac) * size)))
            row = {"N": size, "fraction": float(frac), "sketch_size": ell,
                   "damping": float(damping), "backend": jax.default_backend(),
                   "device_kind": getattr(dev, "device_kind", str(dev))}
            sources = set()
            for name in ("standard", "gpu"):
                compiled = jax.jit(_solver(name, size, ell, damping)).lower(k, g, key).compile()
                out = compiled(k, g, key)
                if not bool(jnp.all(jnp.isfinite(out))):
                    raise FloatingPointError(f"{name} Nyström gave non-finite output at "
                                             f"N={size}, ℓ={ell}")
                row[f"{name}_seconds"] = _time(compiled, (k, g, key), repeats)
                measured = (_measured_mib(name, kernel_path, ell, damping)
                            if jax.default_backend() == "cpu" else None)
                row[f"{name}_mib"] = measured if measured is not None else _mib(compiled)
                sources.add("rss" if measured is not None else "xla")
            row["memory_source"] = "+".join(sorted(sources))
            row["speedup"] = row["standard_seconds"] / row["gpu_seconds"]
            log(f"N={size} ℓ={ell}: standard {row['standard_seconds']:.4f} s "
                f"{row['standard_mib']:.0f} MiB, GPU-efficient {row['gpu_seconds']:.4f} s "
                f"{row['gpu_mib']:.0f} MiB ({row['speedup']:.1f}×)")
            rows.append(row)
        os.remove(kernel_path)
    os.rmdir(tmp)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| N | ℓ / N | ℓ | standard [s] | GPU-efficient [s] | speed-up | standard [MiB] "
            "| GPU-efficient [MiB] |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['fraction']:.0%} | {r['sketch_size']:,} | "
                     f"{r['standard_seconds']:.4g} | {r['gpu_seconds']:.4g} | "
                     f"{r['speedup']:.1f}× | {r['standard_mib']:.1f} | {r['gpu_mib']:.1f} |")
    dev = f"{rows[0]['backend']} ({rows[0]['device_kind']})" if rows else ""
    src = rows[0].get("memory_source", "xla") if rows else ""
    mem = ("peak resident memory one call adds, measured in a fresh process" if "rss" in src
           else "XLA buffer assignment of the compiled call")
    return ("Standard vs GPU-efficient randomized Nyström: build + one solve of (K̂ + λI)u = g, "
            f"λ = {rows[0]['damping'] if rows else ''}, on {dev}. Memory: {mem}.\n\n"
            + "\n".join(lines) + "\n")
