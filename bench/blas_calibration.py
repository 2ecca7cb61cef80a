"""The GEMM backend's calibration table: K = J Jᵀ and ENGD-W steps by XLA's dot vs the BLAS.

    python bench/blas_calibration.py              # the paper's 5d size, 3 rounds
    python bench/blas_calibration.py --rounds 5 --skip-threads

One process, everything interleaved round-robin (A, B, A, B, ...) so that background load hits
every variant alike; medians and ratios.  On poisson5d with the paper's net (5-64-64-48-48-1,
P = 10,065), N = 3000 + 500, float64, a fixed batch (data seed 0, model seed 1), J as the
network's layer blocks (as the optimizers build it):

1. the machine: CPU model and flags (AVX2 / AVX-512 / FMA), load, the BLAS library, threads;
   the cached ``auto`` choice (:func:`pinn_ng.blas.calibration`) and a fresh calibration;
2. K's lower triangle by XLA (row blocks) and by the BLAS (``?syrk`` via the FFI handler), and
   by the BLAS through ``jax.pure_callback`` (which copies J first); numpy's full J Jᵀ (all
   cores) on the same J; the Cholesky factor of K + λI by jaxlib and by ``?potrf``.  Rates
   count N²P flops for K's lower triangle, 2N²P for the full product (the issue's
   convention) and N³/3 for a Cholesky;
3. whole ENGD-W steps (update + parameter update on the fixed batch), fixed η and line search,
   with each backend (``xla``, ``blas``, and ``auto``: what a run gets by default), and the
   ratio fixed-η step / numpy's J Jᵀ;
4. threads: the fixed-η step with the GEMM's BLAS threads and the factorisations' (LAPACK)
   threads at 1 or all cores.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DAMPING = 1e-8  # any λ > 0 costs the same; large enough that no jitter retry is timed
ETA = 5.23e-2  # ENGD-W's best fixed η on 5d


def machine() -> dict:
    import platform

    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    simd = sorted(f for f in flags if f in ("avx", "avx2", "fma") or f.startswith("avx512"))
    return {"model": model, "simd": simd, "avx512": any(f.startswith("avx512") for f in flags)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--n", type=int, default=3500, help="N = N_Ω + N_∂Ω (6:1), default 3500")
    ap.add_argument("--skip-threads", action="store_true", help="no thread table")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.n < 7:
        ap.error("--rounds must be >= 1 and --n >= 7")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from threadpoolctl import threadpool_info, threadpool_limits

    import pinn_ng
    from pinn_ng import blas, models, optim, problems
    from pinn_ng.residuals import ResidualFn

    from bench._timing import compile_jitted, interleaved_timings

    pinn_ng.enable_x64()
    cores = blas.gemm_threads()
    blas.limit_blas_threads(1)  # as the CLI: one LAPACK thread outside the GEMM
    m = machine()
    load = os.getloadavg()
    print(f"CPU: {m['model']}; SIMD flags: {' '.join(m['simd'])}; AVX-512: "
          f"{'yes' if m['avx512'] else 'no'}; cores owned: {cores}; "
          f"load average (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            print(f"BLAS: {lib['internal_api']} {lib['version']} ({lib.get('architecture')}), "
                  f"{os.path.basename(lib['filepath'])}")
    print(f"jax {jax.__version__}; float64; GEMM threads {cores}, LAPACK threads 1")
    cached = blas.calibration()
    fresh = blas.calibration(refresh=True)
    for name, c in (("cached", cached), ("fresh", fresh)):
        print(f"calibration ({name}, K of J {c['shape'][0]} x {c['shape'][1]}): XLA "
              f"{c['xla_s']:.3f} s, BLAS {c['blas_s']:.3f} s, BLAS / XLA "
              f"{c['blas_s'] / c['xla_s']:.2f} -> auto = {c['backend']}")

    problem = problems.get("poisson5d")
    init, apply = models.make("mlp", problem.widths, "float64")
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    n_b = max(1, round(args.n / 7))
    batch = problem.sample(jax.random.PRNGKey(0), args.n - n_b, n_b, dtype=jnp.float64)
    _, jac = jax.jit(rf.residual_and_jacobian)(params, batch)
    sizes = [w.size + b.size for w, b in params]
    cuts = np.cumsum([0] + sizes)
    parts = [jnp.asarray(jac[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    jac_np = np.asarray(jac)
    n, p = jac_np.shape
    del jac
    print(f"\nJ: {n} x {p} (float64, {len(parts)} layer blocks {sizes}); "
          f"{args.rounds} rounds, interleaved; medians")

    # -- K
    k_fns = {b: jax.jit(lambda ps, b=b: blas.kernel_lower(ps, backend=b)) for b in ("xla", "blas")}

    def via_pure_callback(ps):
        def host(*arrays):
            out = np.empty((n, n), jac_np.dtype)
            blas._syrk_lower_into(out, [np.asarray(a) for a in arrays])
            return out
        return jax.pure_callback(host, jax.ShapeDtypeStruct((n, n), jnp.float64), *ps)

    k_fns["blas (pure_callback)"] = jax.jit(via_pure_callback)
    compiled = {name: compile_jitted(fn, parts)[0] for name, fn in k_fns.items()}
    ref = np.tril(np.asarray(compiled["xla"](parts)))
    for name, c in compiled.items():
        err = np.max(np.abs(np.tril(np.asarray(c(parts))) - ref)) / np.max(np.abs(ref))
        assert err < 1e-12, (name, err)

    def numpy_full():
        with threadpool_limits(cores, user_api="blas"):
            return jac_np @ jac_np.T

    calls = {f"K lower, {name}": (lambda c=c: c(parts)) for name, c in compiled.items()}
    calls["numpy J Jᵀ (full)"] = numpy_full

    # -- the step's factorisation of K + λI: jaxlib's LAPACK call (one thread) or ?potrf
    # through the FFI handler (the GEMM's threads)
    k_damped = jnp.asarray(np.tril(np.asarray(compiled["xla"](parts))) + DAMPING * np.eye(n))
    chol = {b: jax.jit(lambda a, b=b: blas.cholesky_lower(a, backend=b)) for b in ("xla", "blas")}
    factors = {b: np.asarray(f(k_damped)) for b, f in chol.items()}
    err = np.max(np.abs(factors["blas"] - factors["xla"])) / np.max(np.abs(factors["xla"]))
    print(f"Cholesky of K + λI: BLAS vs XLA factor, max rel. difference {err:.1e}")
    for b, f in chol.items():
        calls[f"Cholesky, {b}"] = (lambda f=f: f(k_damped))

    # -- ENGD-W steps, each traced with its backend
    def step_fn(opt):
        def step(params, state, batch):
            updates, state = opt.update(None, state, params, batch=batch)
            return optax.apply_updates(params, updates), state
        return jax.jit(step)

    steps = {}
    for backend in ("xla", "blas", "auto"):
        os.environ[blas.ENV] = backend
        for kind, lr in (("fixed η", ETA), ("line search", "line_search")):
            kw = {} if lr == "line_search" else {"learning_rate": lr}
            opt = optim.engd_woodbury(rf, DAMPING, **kw)
            state = opt.init(params)
            c, _ = compile_jitted(step_fn(opt), params, state, batch)
            steps[backend, kind] = (c, state)
    os.environ.pop(blas.ENV)
    for (backend, kind), (c, state) in steps.items():
        calls[f"ENGD-W step {kind}, {backend}"] = (lambda c=c, s=state: c(params, s, batch))
    names = list(calls)
    t = dict(zip(names, interleaved_timings(list(calls.values()), args.rounds)))

    flops = {name: (2 * n * n * p if "full" in name else n * n * p) for name in names
             if name.startswith(("K", "numpy"))}
    flops.update({name: n**3 / 3 for name in names if name.startswith("Cholesky")})
    print("\n| what | median s | min s | GFLOP/s |\n|---|---:|---:|---:|")
    for name in names:
        rate = f"{flops[name] / t[name].median / 1e9:.0f}" if name in flops else ""
        print(f"| {name} | {t[name].median:.3f} | {min(t[name].samples):.3f} | {rate} |")
    x, b = t["K lower, xla"].median, t["K lower, blas"].median
    np_full = t["numpy J Jᵀ (full)"].median
    print(f"\nK lower: BLAS / XLA = {b / x:.3f} (AVX-512 target ≤ 0.55; without: auto must "
          f"not cost more than 1.03 x XLA); pure_callback / FFI = "
          f"{t['K lower, blas (pure_callback)'].median / b:.2f}")
    print(f"Cholesky: BLAS / XLA = "
          f"{t['Cholesky, blas'].median / t['Cholesky, xla'].median:.3f}")
    for kind in ("fixed η", "line search"):
        sx, sb, sa = (t[f"ENGD-W step {kind}, {be}"].median for be in ("xla", "blas", "auto"))
        print(f"ENGD-W {kind}: BLAS / XLA = {sb / sx:.3f}, auto / XLA = {sa / sx:.3f}")
    print("fixed-η step / numpy J Jᵀ (target ≤ 1.6): "
          + ", ".join(f"with {be} {t[f'ENGD-W step fixed η, {be}'].median / np_full:.2f}"
                      for be in ("xla", "blas", "auto"))
          + f" (auto here: K by {blas.kernel_backend('auto')}, the Cholesky of order {n} by "
          f"{blas.cholesky_backend('auto', n)})")

    if not args.skip_threads:
        c_b, s_b = steps["blas", "fixed η"]
        c_x, s_x = steps["xla", "fixed η"]

        def threaded(c, s, gemm, lapack):
            def call():
                os.environ[blas.THREADS_ENV] = str(gemm)
                try:
                    with threadpool_limits(lapack, user_api="blas"):
                        return jax.block_until_ready(c(params, s, batch))
                finally:
                    os.environ.pop(blas.THREADS_ENV)
            return call

        variants = {f"blas, GEMM {g} / LAPACK {la}": threaded(c_b, s_b, g, la)
                    for g, la in ((1, 1), (cores, 1), (cores, cores))}
        variants.update({f"xla, LAPACK {la}": threaded(c_x, s_x, cores, la) for la in (1, cores)})
        tt = dict(zip(variants, interleaved_timings(list(variants.values()), args.rounds)))
        print("\n| ENGD-W fixed-η step, BLAS threads | median s | min s |\n|---|---:|---:|")
        for name, tm in tt.items():
            print(f"| {name} | {tm.median:.3f} | {min(tm.samples):.3f} |")
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
