"""ENGD-W / SPRING training steps with and without ``jitter_warm_start``, interleaved.

    python bench/jitter_warm_start.py                    # paper's 5d, ENGD-W, 30 steps each
    python bench/jitter_warm_start.py --optimizer spring --steps 10

At the paper's 5d λ = 3.17e-12 the Cholesky of K + λI fails in most ENGD-W steps (K's
rounding error ≈ eps·‖K‖ exceeds λ), so each such step factorises twice: λ alone, then the
first jitter rung (:func:`pinn_ng.optim.solvers.cholesky_solve`).  With
``jitter_warm_start=True`` a step starts at the rung the previous one needed.

Both runs start from the same parameters (model seed 1) and train on the same batch sequence
(data seed 0, a fresh batch every step, as ``pinn-ng run`` does), with the paper's net, batch
(3000 + 500) and hyper-parameters of the line-search configuration, in float64.  Their steps
alternate (cold, warm, cold, …), each timed to ``block_until_ready``, so background load hits
both alike.  Prints the per-step medians and their ratio, how many steps jittered, and loss and
L2 error at the end (the trajectories differ only by the damping the warm start adds).
Run it with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to time what ``pinn-ng run`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: ``--optimizer`` → the default preset's configuration whose hyper-parameters it runs.
PRESET_LABELS = {"engd_woodbury": "engd_w", "spring": "spring"}


def preset_hparams(label: str) -> dict:
    """The default preset's 5d hyper-parameters of ``label`` (the line-search configuration);
    ``jitter_warm_start`` is left to the caller."""
    from pinn_ng.pipeline import config

    opt = config.load_yaml(config.preset_path("default"))["optimizers"][label]
    hp = dict(opt["hparams"])
    hp.update((opt.get("per_problem") or {}).get("poisson5d") or {})
    hp.pop("jitter_warm_start", None)
    return hp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", choices=sorted(PRESET_LABELS), default="engd_woodbury")
    ap.add_argument("--steps", type=int, default=30, help="steps of each run (default 30)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error(f"--steps must be at least 2, got {args.steps}")

    import jax
    import jax.numpy as jnp

    import pinn_ng
    from pinn_ng import hugepages, models, optim, problems
    from pinn_ng.residuals import ResidualFn
    from pinn_ng.train import make_step

    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params0 = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    hp = preset_hparams(PRESET_LABELS[args.optimizer])
    runs = {}
    for label, warm in (("cold", False), ("warm", True)):
        opt = optim.make(args.optimizer, rf, jitter_warm_start=warm, **hp)
        step, _ = make_step(problem, rf, opt, uses_grads=False, diagnostics=optim.diagnostics,
                            n_interior=3000, n_boundary=500, dtype=jnp.float64, data_seed=0)
        state = opt.init(params0)
        t0 = time.perf_counter()
        compiled = jax.jit(step).lower(params0, state, 0).compile()
        print(f"compiled {label} in {time.perf_counter() - t0:.1f} s", flush=True)
        runs[label] = {"step": compiled, "params": params0, "state": state, "times": [],
                       "jittered": 0, "rungs": [], "loss": None, "jitter_at": []}
    print(f"device: {jax.devices()[0].device_kind}, float64, glibc huge pages: "
          f"{hugepages.active()}; {args.optimizer} {hp}, N = 3000 + 500")
    for k in range(args.steps):
        for label, run in runs.items():
            t0 = time.perf_counter()
            params, state, out = run["step"](run["params"], run["state"], k)
            jax.block_until_ready((params, state, out))
            run["times"].append(time.perf_counter() - t0)
            run["params"], run["state"] = params, state
            run["last_jitter"] = float(out["jitter"])
            run["jitter_at"].append(run["last_jitter"])
            run["jittered"] += run["last_jitter"] > 0
            run["rungs"].append(int(state[0].jitter_rung))
            run["loss"] = float(out["loss"])
        print(f"step {k + 1}/{args.steps}: " + ", ".join(
            f"{label} {run['times'][-1]:.2f} s (jitter {run['last_jitter']:.2g})"
            for label, run in runs.items()), flush=True)
    print()
    cold_jittered = [k for k in range(1, args.steps) if runs["cold"]["jitter_at"][k] > 0]
    plain = [k for k in range(1, args.steps) if k not in cold_jittered]
    print("medians over steps 2.., split by whether the cold run's first Cholesky failed")
    print("| run | s/step, all | s/step, cold jittered | s/step, cold did not | steps that "
          "jittered | loss before the last step | L2 at the end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    med = {}

    def median_of(times, ks):
        return f"{statistics.median(times[k] for k in ks):.3f}" if ks else "n/a"

    for label, run in runs.items():
        med[label] = statistics.median(run["times"][1:])
        l2 = problem.errors(apply, run["params"])["l2"]
        print(f"| {label} | {med[label]:.3f} | {median_of(run['times'], cold_jittered)} "
              f"({len(cold_jittered)} steps) | {median_of(run['times'], plain)} ({len(plain)}) "
              f"| {run['jittered']} of {args.steps} | {run['loss']:.6g} | {l2:.4e} |")
    print(f"\nwarm / cold per-step time, all steps 2..: {med['warm'] / med['cold']:.3f}; "
          f"warm run's rungs: {runs['warm']['rungs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
