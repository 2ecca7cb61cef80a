"""Standard vs GPU-efficient randomized Nyström, time and memory (paper appendix B).

    pinn-ng nystrom-table --out-csv nystrom_table.csv --out-md nystrom_table.md
    pinn-ng nystrom-table --spec '{"problem": "poisson2d", "n": [60], ...}' --out-csv t.csv

The one Nyström timing harness: the pipeline's ``nystrom_table`` rule runs it as a ``pinn-ng``
command (so an installed copy runs the pipeline, no checkout needed), the asv suite
(``bench/benchmarks_optim.py``) and ``bench/gpu_check.py`` import its solves and kernel.
For each batch size N and sketch fraction ℓ/N: the kernel K = JJᵀ of the problem's network
at initialisation on one batch (N_Ω : N_∂Ω as in the paper's batch), then the time to
build each Nyström approximation and apply (K̂ + λI)⁻¹ to one vector, and the memory it needs.

- Time: compiled first (:func:`~pinn_ng.pipeline.timing.compile_jitted`, not timed), one
  checked call, then the median of ``repeats`` calls
  (:func:`~pinn_ng.pipeline.timing.median_time`), each up to
  ``block_until_ready``.
- Memory (``*_mib``): the peak memory one call adds on top of its inputs.  On Linux it is
  measured: each variant runs in a fresh child process (this module, ``--child-peak``) that
  loads K, compiles, resets the kernel's resident-set high-water mark
  (``/proc/self/clear_refs``), calls once and reports VmHWM − VmRSS.  That sees everything the
  call touches, the LAPACK workspaces of QR and SVD included, which XLA's buffer assignment
  (``compiled.memory_analysis()``) does not: on the CPU the latter reports the same bytes for
  both variants.  Elsewhere the XLA figure is used (column ``memory_source`` says which).  The
  paper's numbers are CUDA peak allocations including K itself, so compare ratios rather than
  absolute MiB.
"""

from __future__ import annotations

import json
import os
import sys

import jax

from .timing import MiB, compile_jitted, median_time, xla_peak_bytes

COLUMNS = ["N", "fraction", "sketch_size", "damping", "standard_seconds", "gpu_seconds",
           "speedup", "standard_mib", "gpu_mib", "memory_source", "backend", "device_kind"]
#: What ``pinn-ng nystrom-table`` measures when neither ``--spec`` nor a flag says otherwise:
#: the paper's appendix-B setting.
DEFAULTS = {"problem": "poisson5d", "n": [5000], "fractions": [0.2, 0.4, 0.6, 0.8],
            "damping": 1e-7, "repeats": 5}
#: The two variants: name in the table's columns -> name in the asv suite.
VARIANTS = {"standard": "standard", "gpu": "gpu_efficient"}


def sketch_size(n: int, fraction: float) -> int:
    return max(1, int(round(float(fraction) * n)))


def solve_fn(variant: str, n: int, ell: int, damping: float):
    """(K̂ + λI)⁻¹ g from K, g and a key: Nyström sketch of rank ℓ, ``standard`` or ``gpu``."""
    from pinn_ng.optim import solvers

    def standard(k, g, key):
        return solvers.nystrom_standard(lambda v: k @ v, n, ell, key, k.dtype).solve(g, damping)

    def gpu(k, g, key):
        return solvers.nystrom_gpu(lambda v: k @ v, n, ell, key, k.dtype, damping).solve(g)

    return {"standard": standard, "gpu": gpu}[variant]


def solve_args(k):
    """The right-hand side and the sketch key every harness uses with kernel ``k``."""
    n = k.shape[0]
    return (k, jax.random.normal(jax.random.PRNGKey(2), (n,), dtype=k.dtype),
            jax.random.PRNGKey(3))


def kernel(problem_name: str, n: int, widths=None, dtype="float64", seed: int = 0):
    """K = JJᵀ (N×N) of the problem's net (model seed 1) on a batch of N points."""
    from pinn_ng import models, plugins, problems
    from pinn_ng.residuals import ResidualFn

    plugins.load()  # a plugin's problem works here too (PINN_NG_PLUGINS, as in every job)
    problem = problems.get(problem_name)
    n_b = max(1, round(n * problem.n_boundary / (problem.n_interior + problem.n_boundary)))
    init, apply = models.mlp(widths or problem.widths, dtype=dtype)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(seed), n - n_b, n_b, dtype)
    jac = ResidualFn(problem, apply).jacobian(params, batch)
    return jax.block_until_ready(jac @ jac.T)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child_peak_mib(variant: str, kernel_path: str, ell: int, damping: float) -> float:
    """In this (fresh) process: load K, compile, reset VmHWM, call once; peak MiB added."""
    import numpy as np

    from ..blas import limit_blas_threads
    from ..precision import enable_x64

    k_np = np.load(kernel_path)
    if k_np.dtype == np.float64:
        enable_x64()
    limit_blas_threads(1)
    k = jax.numpy.asarray(k_np)
    del k_np
    args = solve_args(k)
    compiled, _ = compile_jitted(jax.jit(solve_fn(variant, k.shape[0], ell, damping)), *args)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size to the current one
    base = _status_kib("VmRSS")
    jax.block_until_ready(compiled(*args))
    return (_status_kib("VmHWM") - base) / 1024


def _measured_mib(variant: str, kernel_path: str, ell: int, damping: float) -> float | None:
    """Peak MiB of one call in a fresh child process (Linux), or None where unsupported."""
    import subprocess

    if not os.path.exists("/proc/self/clear_refs"):
        return None
    try:
        out = subprocess.run([sys.executable, "-m", __name__, "--child-peak",
                              variant, kernel_path, str(ell), repr(damping)],
                             check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return None


def table(problem: str, n: list, fractions: list, damping: float, widths=None,
          repeats: int = 5, dtype="float64", log=print) -> list[dict]:
    """One row per (N, fraction): seconds and MiB of both variants (columns :data:`COLUMNS`)."""
    import tempfile

    import jax.numpy as jnp
    import numpy as np

    from ..precision import enable_x64

    if dtype == "float64":
        enable_x64()
    rows = []
    dev = jax.devices()[0]
    tmp = tempfile.mkdtemp(prefix="nystrom_table_")
    for size in n:
        size = int(size)
        k = kernel(problem, size, widths, dtype)
        kernel_path = os.path.join(tmp, f"K_{size}.npy")
        np.save(kernel_path, np.asarray(k))
        args = solve_args(k)
        for frac in fractions:
            ell = sketch_size(size, frac)
            row = {"N": size, "fraction": float(frac), "sketch_size": ell,
                   "damping": float(damping), "backend": jax.default_backend(),
                   "device_kind": getattr(dev, "device_kind", str(dev))}
            sources = set()
            for name in VARIANTS:
                compiled, _ = compile_jitted(jax.jit(solve_fn(name, size, ell, damping)), *args)
                out = compiled(*args)  # checked once before timing (and a warm-up)
                if not bool(jnp.all(jnp.isfinite(out))):
                    raise FloatingPointError(f"{name} Nyström gave non-finite output at "
                                             f"N={size}, ℓ={ell}")
                row[f"{name}_seconds"] = median_time(lambda c=compiled: c(*args), repeats,
                                                     warmup=0, min_repeats=repeats).median
                measured = (_measured_mib(name, kernel_path, ell, damping)
                            if jax.default_backend() == "cpu" else None)
                xla = xla_peak_bytes(compiled)
                row[f"{name}_mib"] = (measured if measured is not None
                                      else (xla / MiB if xla is not None else float("nan")))
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


def write(spec: dict, out_csv, out_md=None, *, dtype="float64", log=print) -> list[dict]:
    """:func:`table` of ``spec`` (problem, n, fractions, damping, repeats, widths: the preset's
    ``nystrom_table``, :data:`DEFAULTS` for what it lacks) -> ``out_csv`` and ``out_md``."""
    from .. import blas
    from . import records

    spec = {**DEFAULTS, **(spec or {})}
    blas.limit_blas_threads(1)  # OpenBLAS threads otherwise spin against XLA's
    rows = table(spec["problem"], spec["n"], spec["fractions"], spec["damping"],
                 widths=spec.get("widths"), repeats=spec["repeats"], dtype=dtype, log=log)
    records.atomic_write_text(out_csv, records.rows_to_csv(rows, COLUMNS))
    if out_md:
        records.atomic_write_text(out_md, markdown(rows))
    return rows


def load_spec(text: str | None) -> dict:
    """The ``--spec`` JSON object of ``pinn-ng nystrom-table`` (``{}`` if none)."""
    from .errors import UserError

    if not text:
        return {}
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--spec: not valid JSON ({err.msg}); give a JSON object such as "
                        '{"problem": "poisson2d", "n": [60]}') from None
    if not isinstance(spec, dict):
        raise UserError(f"--spec must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(DEFAULTS) - {"widths"})
    if unknown:
        raise UserError(f"--spec: unknown key {unknown[0]!r}; valid keys: "
                        f"{sorted([*DEFAULTS, 'widths'])}")
    return spec


if __name__ == "__main__":  # the memory measurement's fresh process (see child_peak_mib)
    if sys.argv[1:2] != ["--child-peak"]:
        sys.exit("usage: pinn-ng nystrom-table ... (this module runs itself with --child-peak)")
    variant, path, ell, damping = sys.argv[2:6]
    print(child_peak_mib(variant, path, int(ell), float(damping)))
