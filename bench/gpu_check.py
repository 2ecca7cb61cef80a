"""One-shot accelerator check: the paper's two speed claims on whatever device JAX sees.

    python bench/gpu_check.py            # ENGD vs ENGD-W at N = 3500, P = 10,065; Nyström table
    python bench/gpu_check.py --quick    # smaller sizes, for a smoke test of the script

Prints one Markdown table: seconds per step of ENGD and ENGD-W (fixed η) on poisson5d with the
paper's net at the paper's batch (3000 + 500 points) and their ratio, then standard vs
GPU-efficient randomized Nyström (build + one solve, λ = 1e-7) on the 5d kernel at N = 5000,
sketch 20/40/60/80 % of N, with their ratios and XLA's peak memory.  float64 throughout, as in
the paper.  Needs a CUDA build of jaxlib to see a GPU (``pip install "jax[cuda12]==0.10.2"``);
on a CPU it runs all the same and says so.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

import pinn_ng
from pinn_ng import models, problems
from pinn_ng.residuals import ResidualFn

from pinn_ng.pipeline import nystrom_table
from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory
from bench.optim_speed import DAMPING, ETA, split_batch, step_fn


def engd_ratio(n: int, repeats: int):
    from pinn_ng import optim

    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    n_i, n_b = split_batch(n)
    batch = problem.sample(jax.random.PRNGKey(0), n_i, n_b)
    out = {}
    calls = []
    for name, opt in (("ENGD", optim.engd(rf, DAMPING, learning_rate=ETA)),
                      ("ENGD-W", optim.engd_woodbury(rf, DAMPING, learning_rate=ETA))):
        state = opt.init(params)
        c, _ = compile_jitted(step_fn(opt), params, state, batch)
        jax.block_until_ready(c(params, state, batch))
        calls.append(lambda c=c, s=state: c(params, s, batch))
        out[name] = peak_memory(c)[0] / MiB
    t = interleaved_timings(calls, repeats, max_seconds=300)
    return t[0].median, t[1].median, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    dev = jax.devices()[0]
    n_engd, n_ny = (700, 1000) if args.quick else (3500, 5000)
    print(f"backend: {jax.default_backend()}, device: {getattr(dev, 'device_kind', dev)}\n")
    t_engd, t_wood, mem = engd_ratio(n_engd, args.repeats)
    rows = nystrom_table.table("poisson5d", [n_ny], [0.2, 0.4, 0.6, 0.8], 1e-7,
                               repeats=args.repeats, log=lambda *a: None)
    print("| measurement | value |\n|---|---:|")
    print(f"| ENGD s/step (N = {n_engd}, P = 10,065) | {t_engd:.4f} |")
    print(f"| ENGD-W s/step | {t_wood:.4f} |")
    print(f"| ENGD / ENGD-W | {t_engd / t_wood:.1f}× |")
    print(f"| peak MiB ENGD / ENGD-W | {mem['ENGD']:.0f} / {mem['ENGD-W']:.0f} |")
    for r in rows:
        print(f"| Nyström N = {r['N']}, ℓ = {r['fraction']:.0%}: standard / GPU-efficient s | "
              f"{r['standard_seconds']:.4f} / {r['gpu_seconds']:.4f} ({r['speedup']:.1f}×) |")
        print(f"| Nyström N = {r['N']}, ℓ = {r['fraction']:.0%}: standard / GPU-efficient MiB | "
              f"{r['standard_mib']:.0f} / {r['gpu_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
