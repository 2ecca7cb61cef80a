"""The structured forward-Laplacian path against folx, and the chunked line search.

    python bench/structured_speed.py            # 5d (N = 3500, P = 10,065) and 100d (N = 150)
    python bench/structured_speed.py --quick    # fewer repeats

All timings of one table are taken round-robin in this one process (compiled first,
``block_until_ready``, float64), so background load hits them alike; "today" is the folx path
(per-point folx J, all 32 line-search candidates in one vmapped pass).
Peak memory: XLA's buffer assignment of each compiled function, and the peak RSS of a
three-step training run in a fresh process for the line search against a fixed η.

Run it twice to see the huge-page tunable (which ``pinn-ng run`` sets for itself)::

    python bench/structured_speed.py
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python bench/structured_speed.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import optax

import pinn_ng
from pinn_ng import models, optim, problems
from pinn_ng.pipeline import hugepages
from pinn_ng.optim.step_size import step_size_chain
from pinn_ng.residuals import ResidualFn

from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory

DAMPING = 3.17e-12  # ENGD-W's best 5d λ with the line search in the paper
ETA = 5.23e-2


def _setup(name, n_i, n_b):
    problem = problems.get(name)
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(0), n_i, n_b)
    return problem, apply, params, batch


def _engd_w(rf, learning_rate, chunk_size):
    if learning_rate == "line_search":
        step = optim.scale_by_grid_line_search(rf, chunk_size=chunk_size)
    else:
        step = step_size_chain(rf, learning_rate)
    return optax.chain(optim.scale_by_engd_woodbury(rf, DAMPING), step)


def _step(opt):
    def step(params, state, batch):
        updates, state = opt.update(None, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def _table(title, rows):
    print(f"\n{title}\n")
    print("| what | s | × first row | peak MiB (XLA) |")
    print("|---|---:|---:|---:|")
    base = rows[0][1]
    for name, sec, mib in rows:
        print(f"| {name} | {sec:.4f} | {sec / base:.2f} | {mib:.0f} |")


def jacobian_table(name, n_i, n_b, repeats):
    problem, apply, params, batch = _setup(name, n_i, n_b)
    calls, rows = [], []
    for label, method in (("J, folx per point (today)", "folx"),
                          ("J, structured channels", "structured")):
        rf = ResidualFn(problem, apply, method=method)
        fn = jax.jit(lambda p, b, rf=rf: rf.residual_and_jacobian(p, b))
        compiled, _ = compile_jitted(fn, params, batch)
        calls.append(lambda c=compiled: c(params, batch))
        rows.append([label, None, peak_memory(compiled)[0] / MiB])
    for label, method in (("r and K, from folx's J (today)", "folx"),
                          ("r and K, structured sample space", "structured")):
        rf = ResidualFn(problem, apply, method=method)
        fn = jax.jit(lambda p, b, rf=rf: rf.sample_space(p, b)[:2])
        compiled, _ = compile_jitted(fn, params, batch)
        calls.append(lambda c=compiled: c(params, batch))
        rows.append([label, None, peak_memory(compiled)[0] / MiB])
    for label, method in (("r, folx (today)", "folx"), ("r, structured", "structured")):
        rf = ResidualFn(problem, apply, method=method)
        compiled, _ = compile_jitted(jax.jit(lambda p, b, rf=rf: rf(p, b)), params, batch)
        calls.append(lambda c=compiled: c(params, batch))
        rows.append([label, None, peak_memory(compiled)[0] / MiB])
    times = interleaved_timings(calls, repeats, max_seconds=120)
    for row, t in zip(rows, times):
        row[1] = t.median
    _table(f"{name}, N = {n_i + n_b}, P = {problem.n_params:,}", rows)
    return {r[0]: r[1] for r in rows}


def step_table(repeats):
    problem, apply, params, batch = _setup("poisson5d", 3000, 500)
    today = ResidualFn(problem, apply, method="folx")
    new = ResidualFn(problem, apply)
    variants = {
        "ENGD-W η fixed, today (folx J)": _engd_w(today, ETA, None),
        "ENGD-W line search, today (folx, 32 at once)": _engd_w(today, "line_search", None),
        f"ENGD-W η fixed, new (default: {new.method})": _engd_w(new, ETA, None),
        "ENGD-W line search, new, chunks of 8": _engd_w(new, "line_search", 8),
        "ENGD-W line search, new, one at a time": _engd_w(new, "line_search", 1),
    }
    calls, rows = [], []
    for label, opt in variants.items():
        state = opt.init(params)
        compiled, _ = compile_jitted(_step(opt), params, state, batch)
        calls.append(lambda c=compiled, s=state: c(params, s, batch))
        rows.append([label, None, peak_memory(compiled)[0] / MiB])
    times = interleaved_timings(calls, repeats, max_seconds=240)
    for row, t in zip(rows, times):
        row[1] = t.median
    _table("ENGD-W step, poisson5d, N = 3500, P = 10,065, λ = 3.17e-12", rows)
    t = {r[0]: r[1] for r in rows}
    fixed = t[f"ENGD-W η fixed, new (default: {new.method})"]
    for label in list(t)[3:]:
        print(f"- {label}: line search adds {100 * (t[label] / fixed - 1):.0f} % to the "
              "fixed-η step")
    print(f"- today's line-search step / new line-search step (one at a time): "
          f"{t['ENGD-W line search, today (folx, 32 at once)'] / t[list(t)[-1]]:.2f}×")
    return t


def _rss_child(learning_rate: str, chunk: str) -> None:
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    problem, apply, params, batch = _setup("poisson5d", 3000, 500)
    rf = ResidualFn(problem, apply)
    lr = "line_search" if learning_rate == "line_search" else ETA
    opt = _engd_w(rf, lr, None if chunk == "none" else int(chunk))
    step, state = _step(opt), opt.init(params)
    for _ in range(3):
        params, state = jax.block_until_ready(step(params, state, batch))
    print(_peak_rss_bytes())


def _peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM (Linux), which exec resets.  getrusage's
    ru_maxrss is not: a child forked from a 4.9 GB parent reports at least 4.9 GB, which is
    what this table once showed for every variant."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_table():
    here = os.path.abspath(__file__)
    rss = {}
    for label, args in (("η fixed", ["fixed", "none"]),
                        ("line search, one at a time", ["line_search", "1"]),
                        ("line search, 32 at once", ["line_search", "none"])):
        out = subprocess.run([sys.executable, here, "--rss-child", *args], check=True,
                             capture_output=True, text=True).stdout
        rss[label] = int(out.split()[-1]) / MiB
    print("\nPeak RSS of 3 ENGD-W steps (default residual, 5d, N = 3500), a fresh process each\n")
    print("| run | peak RSS MiB | × η fixed |\n|---|---:|---:|")
    for label, mib in rss.items():
        print(f"| {label} | {mib:.0f} | {mib / rss['η fixed']:.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    repeats = 3 if args.quick else 7
    print(f"device: {jax.devices()[0].device_kind}, float64, glibc huge pages: "
          f"{hugepages.active()} (pinn_ng/pipeline/hugepages.py)")
    jacobian_table("poisson5d", 3000, 500, repeats)
    jacobian_table("poisson100d", 100, 50, repeats)
    step_table(repeats)
    rss_table()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
