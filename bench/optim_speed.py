"""ENGD vs ENGD-W (and SPRING) step time and peak memory on poisson5d with the paper's net.

    python bench/optim_speed.py                 # N ∈ {500, 1000, 2000, 3500}, P = 10,065
    python bench/optim_speed.py --sizes 500 1000 --skip-engd

Prints one Markdown table (seconds per step = median of repeats of one whole optimizer
update + parameter update on a fixed batch, compiled ahead of time, after
``block_until_ready``; peak memory from XLA's buffer assignment of that compiled step), the
ENGD / ENGD-W ratios measured in the same run, and at the largest N the decomposition of an
ENGD-W step into its unavoidable parts: computing (r, J), one N x N x P product for K = JJᵀ,
one Cholesky of K + λI.  All variants of one N are timed round-robin, so background load hits
them alike.  float64.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import optax

import pinn_ng
from pinn_ng import models, optim, problems
from pinn_ng.residuals import ResidualFn

from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory

DAMPING = 1e-8  # ENGD's best 5d λ in the paper; any λ > 0 costs the same
ETA = 5.23e-2  # ENGD-W's best fixed η on 5d


def split_batch(n: int) -> tuple[int, int]:
    """N_Ω : N_∂Ω = 3000 : 500 as in the paper's 5d batch."""
    n_b = max(1, round(n / 7))
    return n - n_b, n_b


def step_fn(opt):
    def step(params, state, batch):
        updates, state = opt.update(None, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def variants(rf, with_engd: bool):
    out = {}
    if with_engd:
        out["ENGD (η fixed)"] = optim.engd(rf, DAMPING, learning_rate=ETA)
        out["ENGD (line search)"] = optim.engd(rf, DAMPING)
    out["ENGD-W (η fixed)"] = optim.engd_woodbury(rf, DAMPING, learning_rate=ETA)
    out["ENGD-W (line search)"] = optim.engd_woodbury(rf, DAMPING)
    out["SPRING (η fixed)"] = optim.spring(rf, DAMPING, 0.9, learning_rate=ETA)
    return out


def parts(rf, params, batch, repeats):
    """Seconds of the unavoidable parts of an ENGD-W step, timed round-robin."""
    rj = jax.jit(lambda p, b: rf.residual_and_jacobian(p, b))
    c_rj, _ = compile_jitted(rj, params, batch)
    _, jac = c_rj(params, batch)
    full_k = jax.jit(lambda j: j @ j.T)
    c_k, _ = compile_jitted(full_k, jac)
    k = c_k(jac) + DAMPING * jnp.eye(jac.shape[0], dtype=jac.dtype)
    chol = jax.jit(jnp.linalg.cholesky)
    c_chol, _ = compile_jitted(chol, k)
    t = interleaved_timings([lambda: c_rj(params, batch), lambda: c_k(jac), lambda: c_chol(k)],
                            repeats, max_seconds=60)
    return {"J": t[0].median, "K = J Jᵀ (full product)": t[1].median, "Cholesky": t[2].median}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 3500])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-engd", action="store_true", help="skip the P x P baseline")
    args = ap.parse_args(argv)
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    print(f"device: {jax.devices()[0].device_kind}, P = {problem.n_params:,}, float64\n")
    rows, ratios = [], []
    for n in args.sizes:
        n_i, n_b = split_batch(n)
        batch = problem.sample(jax.random.PRNGKey(0), n_i, n_b)
        compiled, mems = {}, {}
        for name, opt in variants(rf, not args.skip_engd).items():
            state = opt.init(params)
            c, _ = compile_jitted(step_fn(opt), params, state, batch)
            new_params, _ = c(params, state, batch)  # check once before timing
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new_params))
            compiled[name] = (c, state)
            mems[name] = peak_memory(c)
        names = list(compiled)
        times = interleaved_timings(
            [lambda c=compiled[k]: c[0](params, c[1], batch) for k in names], args.repeats,
            max_seconds=120)
        t = dict(zip(names, (x.median for x in times)))
        for name in names:
            rows.append((n, name, t[name], mems[name][0] / MiB, mems[name][1]))
        if not args.skip_engd:
            ratios.append((n, t["ENGD (η fixed)"] / t["ENGD-W (η fixed)"],
                           t["ENGD (line search)"] / t["ENGD-W (line search)"]))
    print("| N | optimizer | s / step | peak MiB (source) |")
    print("|---:|---|---:|---:|")
    for n, name, sec, mib, src in rows:
        print(f"| {n} | {name} | {sec:.4f} | {mib:.0f} ({src}) |")
    if ratios:
        print("\n| N | ENGD / ENGD-W (η fixed) | ENGD / ENGD-W (line search) |")
        print("|---:|---:|---:|")
        for n, a, b in ratios:
            print(f"| {n} | {a:.1f}× | {b:.1f}× |")
    n = args.sizes[-1]
    n_i, n_b = split_batch(n)
    p = parts(rf, params, problem.sample(jax.random.PRNGKey(0), n_i, n_b), args.repeats)
    total = sum(p.values())
    fixed = next(sec for m, name, sec, *_ in rows if m == n and name == "ENGD-W (η fixed)")
    line = next(sec for m, name, sec, *_ in rows if m == n and name == "ENGD-W (line search)")
    print(f"\nENGD-W step at N = {n} against its unavoidable parts:")
    print("| part | s |\n|---|---:|")
    for k, v in p.items():
        print(f"| {k} | {v:.4f} |")
    print(f"| sum | {total:.4f} |")
    print(f"\nENGD-W fixed-η step / sum of parts = {fixed / total:.2f} (target ≤ 1.2, stretch ≤ 0.8)")
    print(f"ENGD-W line-search step / fixed-η step = {line / fixed:.2f} (target ≤ 1.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
