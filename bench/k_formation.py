"""How K = JJᵀ is formed against when the Cholesky of K + λI first fails (paper's 5d λ).

    python bench/k_formation.py                 # paper's 5d problem, 30 steps
    python bench/k_formation.py --steps 10 --damping 1e-10

Follows one ENGD-W trajectory (the default preset's line-search configuration: λ = 3.17e-12,
jitter ladder with warm start; the paper's net 5-64-64-48-48-1, N = 3000 + 500, float64,
data seed 0, model seed 1; ``--network mlp_torch`` starts from the authors' initialisation).
At every step, *before* the update, it forms K at that step's parameters and batch in three
ways from the same J:

- ``lower blocks``: the library's assembly (row blocks of the lower triangle,
  :func:`pinn_ng.gram.kernel_lower_from_jacobian`);
- ``per-layer GEMMs``: Σ_l J_l J_lᵀ, one full N x N GEMM per linear layer (weight and bias
  columns together), summed, as the authors' code forms it;
- ``one GEMM``: J Jᵀ as one full product.

and tries the Cholesky factorisation of K + λI (λ alone, no jitter) of each.  Prints one row
per step (ok / FAIL per formation, the largest entrywise difference between the formations
relative to max |K|) and, at the end, the first failing step of each.  The rows use the
trajectory's own step numbering: step k is the k-th update (1-based), as in ``curve.csv`` and
``first_jitter_step``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FORMATIONS = ("lower blocks", "per-layer GEMMs", "one GEMM")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="steps of the trajectory (default 30)")
    ap.add_argument("--network", default="mlp", help="registered network (pinn-ng networks; "
                    "mlp_torch: the authors' initialisation); default mlp")
    ap.add_argument("--damping", type=float, default=None,
                    help="λ of the factorisation test (default: the preset's 5d ENGD-W λ)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be at least 1, got {args.steps}")
    if args.damping is not None and not args.damping >= 0:
        ap.error(f"--damping must be a number >= 0, got {args.damping}")

    import jax
    import jax.numpy as jnp
    import numpy as np

    import pinn_ng
    from pinn_ng import gram, models, optim, problems
    from pinn_ng.pipeline import config
    from pinn_ng.residuals import ResidualFn
    from pinn_ng.train import make_step

    pinn_ng.enable_x64()
    problem = problems.get("poisson5d")
    if args.network not in models.names():
        ap.error(f"--network: unknown network {args.network!r}; valid: {models.names()}")
    init, apply = models.make(args.network, problem.widths, "float64")
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    opt_cfg = config.load_yaml(config.preset_path("default"))["optimizers"]["engd_w"]
    hp = dict(opt_cfg["hparams"])
    lam = hp["damping"] if args.damping is None else args.damping
    opt = optim.make("engd_woodbury", rf, **hp)
    step, _ = make_step(problem, rf, opt, uses_grads=False, diagnostics=optim.diagnostics,
                        n_interior=problem.n_interior, n_boundary=problem.n_boundary,
                        dtype=jnp.float64)
    state = opt.init(params)
    step = jax.jit(step)
    sizes = [w.size + b.size for w, b in params]
    cuts = np.cumsum([0] + sizes)
    data_key = jax.random.PRNGKey(0)

    @jax.jit
    def kernels(params, k):
        batch = problem.sample(jax.random.fold_in(data_key, k), dtype=jnp.float64)
        _, jac = rf.residual_and_jacobian(params, batch)
        lower = gram.kernel_lower_from_jacobian(jac, mirror=False)
        layers = sum(jac[:, a:b] @ jac[:, a:b].T for a, b in zip(cuts[:-1], cuts[1:]))
        full = jac @ jac.T
        n = jac.shape[0]
        eye = jnp.eye(n, dtype=jac.dtype)

        def ok(kern):
            chol = jax.lax.linalg.cholesky(kern + lam * eye, symmetrize_input=False)
            return jnp.all(jnp.isfinite(chol))

        scale = jnp.max(jnp.abs(full))
        low = jnp.tril(jnp.ones((n, n), bool))
        diff_layers = jnp.max(jnp.where(low, jnp.abs(layers - full), 0.0)) / scale
        diff_lower = jnp.max(jnp.where(low, jnp.abs(lower - full), 0.0)) / scale
        return (ok(lower), ok(layers), ok(full)), diff_lower, diff_layers, scale

    print(f"device: {jax.devices()[0].device_kind}, float64; poisson5d, {args.network}, P = "
          f"{models.n_params(problem.widths)}, N = {problem.n_interior} + {problem.n_boundary}; "
          f"factorisation test at λ = {lam:g}; trajectory: engd_woodbury {hp}", flush=True)
    print("| step | " + " | ".join(FORMATIONS) + " | max|K_lower − K_one| / max|K| | "
          "max|K_layers − K_one| / max|K| | max|K| | trajectory jitter δ |")
    print("|---:|" + ":---:|" * len(FORMATIONS) + "---:|---:|---:|---:|")
    first = dict.fromkeys(FORMATIONS)
    t0 = time.perf_counter()
    for k in range(args.steps):
        oks, d_lower, d_layers, scale = kernels(params, k)
        params, state, out = step(params, state, k, data_key)
        jax.block_until_ready(params)
        marks = []
        for name, good in zip(FORMATIONS, oks):
            good = bool(good)
            marks.append("ok" if good else "FAIL")
            if not good and first[name] is None:
                first[name] = k + 1
        print(f"| {k + 1} | " + " | ".join(marks) + f" | {float(d_lower):.2e} | "
              f"{float(d_layers):.2e} | {float(scale):.3e} | {float(out['jitter']):.2e} |",
              flush=True)
    print(f"\n{args.steps} steps in {time.perf_counter() - t0:.0f} s")
    for name in FORMATIONS:
        print(f"first step whose Cholesky of K + λI fails, K by {name}: "
              f"{first[name] if first[name] is not None else f'none in {args.steps} steps'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
