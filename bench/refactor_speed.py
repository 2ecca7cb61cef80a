"""Per-step time of two source trees of pinn_ng, interleaved in one run.

    python bench/refactor_speed.py --old /tmp/old --new .      # each a tree holding pinn_ng/

Two long-lived worker processes, one per tree, compile the same steps on the paper's 5d
problem (P = 10,065, N = 3000 + 500, float64, fixed batch): ENGD-W and SPRING with a fixed η
and with the line search, and Hessian-free with ``--cg-iters`` CG iterations (exactly that
many in trees whose CG took a fixed count at tolerance 0; at most that many in trees with
Martens' stopping test, so that row compares equal work only between trees of one kind).
The coordinator then asks them in turn, round-robin, for one timing of each step, so that
background load hits both alike and they never run at the same time.  Prints the medians and
the ratios new / old.

It also times J itself, ``jax.jit(residual_fn.jacobian)`` of each tree's default residual
function: at 5d (N = 3500) and on ``poisson100d``'s paper net (P = 1,325,057, N = 100 + 50).

``--huge-pages-new-only`` runs the old tree's worker without glibc's huge-page tunable and the
new one with it: each tree as ``pinn-ng run`` ran it (older trees ran without it).  Without
it both workers inherit the caller's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DAMPING = 1e-8
ETA = 5.23e-2


def _worker(cg_iters: int, only: str) -> None:  # runs inside the tree under test
    import jax
    import optax

    import pinn_ng
    from pinn_ng import models, optim, problems

    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))

    def residual_fn(problem, apply):
        try:
            from pinn_ng.residuals import ResidualFn
        except ImportError:  # a tree from before ResidualFn
            return problem.residual_fn(apply)
        return ResidualFn(problem, apply)

    def hessian_free(rf, cg_iters):
        try:  # the trees before Martens' stopping test: a fixed count at tolerance 0
            return optim.hessian_free(rf, 0.1, cg_iters=cg_iters, cg_tol=0.0)
        except TypeError:
            return optim.hessian_free(rf, 0.1, cg_max_iter=cg_iters)

    rf = residual_fn(problem, apply)
    batch = problem.sample(jax.random.PRNGKey(0), 3000, 500)
    opts = {
        "ENGD-W (η fixed)": optim.engd_woodbury(rf, DAMPING, learning_rate=ETA),
        "ENGD-W (line search)": optim.engd_woodbury(rf, DAMPING),
        "SPRING (η fixed)": optim.spring(rf, DAMPING, 0.9, learning_rate=ETA),
        "SPRING (line search)": optim.spring(rf, DAMPING, 0.3115),
        f"Hessian-free ({cg_iters} CG it.)": hessian_free(rf, cg_iters),
    }
    steps = {}
    jacobians = {"J, 5d (N = 3500)": (rf, params, batch)}
    p100 = problems.get("poisson100d")
    init100, apply100 = models.mlp(p100.widths)
    jacobians["J, 100d (N = 150)"] = (residual_fn(p100, apply100), init100(jax.random.PRNGKey(1)),
                                      p100.sample(jax.random.PRNGKey(0), 100, 50))
    jacobians = {k: v for k, v in jacobians.items() if only in k}
    opts = {k: v for k, v in opts.items() if only in k}
    for name, (fn, p, b) in jacobians.items():
        compiled = jax.jit(fn.jacobian).lower(p, b).compile()
        jax.block_until_ready(compiled(p, b))
        steps[name] = (compiled, (p, b))
    for name, opt in opts.items():
        def step(p, s, b, opt=opt):
            updates, s = opt.update(None, s, p, batch=b)
            return optax.apply_updates(p, updates), s

        state = opt.init(params)
        compiled = jax.jit(step).lower(params, state, batch).compile()
        jax.block_until_ready(compiled(params, state, batch))
        steps[name] = (compiled, (params, state, batch))
    print(json.dumps(list(steps)), flush=True)
    for line in sys.stdin:
        name = line.strip()
        compiled, call_args = steps[name]
        t = time.perf_counter()
        jax.block_until_ready(compiled(*call_args))
        print(json.dumps(time.perf_counter() - t), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="tree holding the old pinn_ng/")
    ap.add_argument("--new", default=".", help="tree holding the new pinn_ng/")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cg-iters", type=int, default=50)
    ap.add_argument("--huge-pages-new-only", action="store_true",
                    help="old worker without glibc's huge-page tunable, new worker with it")
    ap.add_argument("--only", default="", metavar="TEXT",
                    help="time only the rows whose name contains TEXT (e.g. 'J,' or 'ENGD-W')")
    args = ap.parse_args(argv)
    for label, tree in (("old", args.old), ("new", args.new)):
        if not os.path.isdir(os.path.join(tree, "pinn_ng")):
            ap.error(f"--{label} {tree!r} holds no pinn_ng/ directory")
    here = os.path.abspath(__file__)
    workers, names = {}, None
    for label, tree in (("old", args.old), ("new", args.new)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        if args.huge_pages_new_only:
            env.pop("GLIBC_TUNABLES", None)
            if label == "new":
                env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
        proc = subprocess.Popen([sys.executable, here, "--worker", str(args.cg_iters),
                                 args.only],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env, cwd=os.path.abspath(tree))
        names = json.loads(proc.stdout.readline())  # compiled everything
        if not names:
            proc.kill()
            ap.error(f"--only {args.only!r} matches no row")
        workers[label] = proc
        print(f"[{label}] compiled {len(names)} steps from {tree}", file=sys.stderr, flush=True)
    times = {(label, n): [] for label in workers for n in names}
    for r in range(args.rounds):
        for n in names:
            for label, proc in workers.items():
                proc.stdin.write(n + "\n")
                proc.stdin.flush()
                times[label, n].append(json.loads(proc.stdout.readline()))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    print(f"huge pages: {'new tree only' if args.huge_pages_new_only else 'as inherited'}")
    print("| step (5d, N = 3500, P = 10,065, float64) | old s | new s | new / old |")
    print("|---|---:|---:|---:|")
    for n in names:
        old, new = (statistics.median(times[label, n]) for label in ("old", "new"))
        print(f"| {n} | {old:.3f} | {new:.3f} | {new / old:.3f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
