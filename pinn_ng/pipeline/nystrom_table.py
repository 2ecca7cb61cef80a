"""``pinn-ng nystrom-table``: standard vs GPU-efficient Nyström, time and memory (paper app. B).

For each batch size N and sketch fraction ℓ/N: the kernel K = JJᵀ of the problem's network at
initialisation on one batch (N_Ω : N_∂Ω as in the paper's batch), then the time to build each
Nyström approximation and apply (K̂ + λI)⁻¹ to one vector, and the memory XLA reserves for it.

- Time: the median of ``repeats`` calls of the compiled function (compiled first, not timed),
  each up to ``block_until_ready``.
- Memory: XLA's buffer assignment of the compiled function (arguments + outputs + temporaries,
  ``compiled.memory_analysis()``), in MiB.  It is what the device must hold at peak for that
  call, known without running it, the same on every backend; the paper's numbers are CUDA
  peak-allocation readings, so compare ratios rather than absolute MiB.
"""

from __future__ import annotations

import statistics
import time

COLUMNS = ["N", "fraction", "sketch_size", "damping", "standard_seconds", "gpu_seconds",
           "speedup", "standard_mib", "gpu_mib", "backend", "device_kind"]


def _mib(compiled) -> float:
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - getattr(m, "alias_size_in_bytes", 0))
    return total / 2**20


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

    problem = problems.get(problem_name)
    n_b = max(1, round(n * problem.n_boundary / (problem.n_interior + problem.n_boundary)))
    init, apply = models.mlp(widths or problem.widths, dtype=dtype)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(seed), n - n_b, n_b, dtype)
    jac = problem.residual_fn(apply).jacobian(params, batch)
    return jax.block_until_ready(jac @ jac.T)


def table(problem: str, n: list, fractions: list, damping: float, widths=None,
          repeats: int = 5, dtype="float64", log=print) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from .. import enable_x64
    from ..optim import solvers

    if dtype == "float64":
        enable_x64()
    rows = []
    dev = jax.devices()[0]
    for size in n:
        k = kernel(problem, int(size), widths, dtype)
        g = jax.random.normal(jax.random.PRNGKey(2), (int(size),), dtype=k.dtype)
        key = jax.random.PRNGKey(3)
        for frac in fractions:
            ell = max(1, int(round(float(frac) * int(size))))

            def standard(k, g, key, ell=ell, size=int(size)):
                approx = solvers.nystrom_standard(lambda v: k @ v, size, ell, key, k.dtype)
                return approx.solve(g, damping)

            def gpu(k, g, key, ell=ell, size=int(size)):
                approx = solvers.nystrom_gpu(lambda v: k @ v, size, ell, key, k.dtype, damping)
                return approx.solve(g)

            row = {"N": int(size), "fraction": float(frac), "sketch_size": ell,
                   "damping": float(damping), "backend": jax.default_backend(),
                   "device_kind": getattr(dev, "device_kind", str(dev))}
            for name, fn in (("standard", standard), ("gpu", gpu)):
                compiled = jax.jit(fn).lower(k, g, key).compile()
                out = compiled(k, g, key)
                if not bool(jnp.all(jnp.isfinite(out))):
                    raise FloatingPointError(f"{name} Nyström gave non-finite output at "
                                             f"N={size}, ℓ={ell}")
                row[f"{name}_seconds"] = _time(compiled, (k, g, key), repeats)
                row[f"{name}_mib"] = _mib(compiled)
            row["speedup"] = row["standard_seconds"] / row["gpu_seconds"]
            log(f"N={size} ℓ={ell}: standard {row['standard_seconds']:.4f} s "
                f"{row['standard_mib']:.0f} MiB, GPU-efficient {row['gpu_seconds']:.4f} s "
                f"{row['gpu_mib']:.0f} MiB ({row['speedup']:.1f}×)")
            rows.append(row)
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
    return ("Standard vs GPU-efficient randomized Nyström: build + one solve of (K̂ + λI)u = g, "
            f"λ = {rows[0]['damping'] if rows else ''}, on {dev}. Memory: XLA buffer "
            "assignment of the compiled call.\n\n" + "\n".join(lines) + "\n")
