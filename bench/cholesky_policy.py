"""Cost of the Cholesky jitter policy on the paper's own 5d kernel.

ENGD-W at the paper's λ = 3.17e-12 on Poisson 5d (net 5-64-64-48-48-1, P = 10,065,
N = 3000 + 500, float64): train ``--steps`` steps (default 8: the Cholesky of K + λI first
fails at step 9), form the kernel K = JJᵀ of the next batch, then time, round-robin in one run:

- ``solve λ``: :func:`pinn_ng.optim.solvers.cholesky_solve` at the paper's λ (the plain
  Cholesky fails; the jitter policy retries with a tiny jitter);
- ``solve 1e-6``: the same solve at a λ where the plain Cholesky succeeds (no retry);
- ``eigh``: the eigendecomposition fallback alone (the previous policy);
- ``ENGD-W step``: J + K + solve + the 31-point line search, for scale.

Also prints K's spectrum against its float64 rounding error and the jitter used.

    python bench/cholesky_policy.py          # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

import pinn_ng
from pinn_ng import optim, train
from pinn_ng.optim.kernels import kernel_lower_from_jacobian
from pinn_ng.optim.solvers import cholesky_solve, symmetrize_lower
from pinn_ng.residuals import ResidualFn

from bench._timing import compile_jitted, interleaved_timings

LAMBDA = 3.17e-12  # the paper's best ENGD-W λ on Poisson 5d (line search)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    problem = pinn_ng.problems.get("poisson5d")
    init, apply = pinn_ng.models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    opt = optim.engd_woodbury(rf, LAMBDA)
    res = train.train(problem, apply, params, opt, rf, uses_grads=False,
                      diagnostics=optim.diagnostics, max_steps=args.steps,
                      eval_every=args.steps, progress=False, log=lambda m: None)
    params = res.final_params
    batch = problem.sample(jax.random.fold_in(jax.random.PRNGKey(0), args.steps))
    r, jac = rf.residual_and_jacobian(params, batch)
    k_low = jax.jit(lambda j: kernel_lower_from_jacobian(j, mirror=False))(jac)

    k = np.asarray(symmetrize_lower(k_low))
    sig = np.linalg.eigvalsh(k)
    eps = np.finfo(np.float64).eps
    print(f"after {args.steps} steps: N = {k.shape[0]}, P = {jac.shape[1]}; "
          f"‖K‖ = {sig[-1]:.3e}, mean diag = {np.mean(np.diag(k)):.3e}, "
          f"eps·‖K‖ = {eps * sig[-1]:.2e} vs λ = {LAMBDA:.2e}")
    print(f"eigenvalues of the float64 K: min {sig[0]:.2e}, {np.sum(sig < 0)} negative, "
          f"{np.sum(sig < -LAMBDA)} below −λ, {np.sum(sig < 1e-10)} below 1e-10")
    kk = np.asarray(jac) @ np.asarray(jac).T  # a second GEMM (NumPy/OpenBLAS), for comparison
    sig2 = np.linalg.eigvalsh(0.5 * (kk + kk.T))
    print(f"K by NumPy's GEMM: min eigenvalue {sig2[0]:.2e}, {np.sum(sig2 < -LAMBDA)} below −λ; "
          f"max |K_xla − K_numpy| = {np.abs(k - kk).max():.2e}")
    # J computed independently: the Laplacian by the dense Hessian instead of folx
    jac_h = np.asarray(ResidualFn(problem, apply, method="hessian").jacobian(params, batch))
    kh = jac_h @ jac_h.T
    sig3 = np.linalg.eigvalsh(0.5 * (kh + kh.T))
    print(f"K from a J by the Hessian operator: max |J_h − J| = "
          f"{np.abs(jac_h - np.asarray(jac)).max():.2e}; min eigenvalue {sig3[0]:.2e}, "
          f"{np.sum(sig3 < -LAMBDA)} below −λ")
    # the most careful: K's eigenvalues as squared singular values of J (K never formed)
    sv = np.linalg.svd(np.asarray(jac), compute_uv=False) ** 2
    print(f"σ(J)²: largest {sv[0]:.3e}, smallest {sv[-1]:.2e}; {np.sum(sv < LAMBDA)} below λ, "
          f"{np.sum(sv < eps * sv[0])} below eps·‖K‖ (exact K is PSD but numerically singular)")

    solve_lam = jax.jit(lambda kl, g: cholesky_solve(kl, LAMBDA, g))
    solve_big = jax.jit(lambda kl, g: cholesky_solve(kl, 1e-6, g))

    def eig_only(kl, g):
        s, v = jnp.linalg.eigh(symmetrize_lower(kl))
        s = jnp.maximum(s, 0.0) + LAMBDA
        return v @ ((v.T @ g) / s)

    step = jax.jit(lambda p, b, st: opt.update(None, st, p, batch=b))
    state = opt.init(params)
    fns = {"solve λ (jitter policy)": (compile_jitted(solve_lam, k_low, r)[0], (k_low, r)),
           "solve 1e-6 (no retry)": (compile_jitted(solve_big, k_low, r)[0], (k_low, r)),
           "eigh fallback alone": (compile_jitted(jax.jit(eig_only), k_low, r)[0], (k_low, r)),
           "ENGD-W step (λ)": (compile_jitted(step, params, batch, state)[0],
                               (params, batch, state))}
    out = solve_lam(k_low, r)
    print(f"jitter used at λ = {LAMBDA:.2e}: δ = {float(out.jitter):.2e} "
          f"({float(out.jitter) / np.mean(np.diag(k)):.1e} × mean diag K), "
          f"eigh fallback: {bool(out.fallback)}")
    calls = [lambda f=f, a=a: f(*a) for f, a in fns.values()]
    timings = interleaved_timings(calls, repeats=args.repeats)
    base = timings[1].median
    step_t = timings[3].median
    print(f"\n{'(round-robin, one run)':28s} {'median s':>10s} {'× no retry':>11s} "
          f"{'share of a step':>16s}")
    for name, t in zip(fns, timings):
        print(f"{name:28s} {t.median:10.3f} {t.median / base:11.2f} {t.median / step_t:16.1%}")


if __name__ == "__main__":
    main()
