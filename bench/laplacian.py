"""Laplacian variants and the residual Jacobian at the paper's sizes: one Markdown table.

    python bench/laplacian.py            # paper sizes, full repeats (a few minutes on 2 cores)
    python bench/laplacian.py --quick    # same sizes, fewer repeats

Rows (float64, paper nets, data seed 0, model seed 1):

- Δu_θ over the interior batch, vmapped over points, for each method of
  ``pinn_ng.operators`` ("folx", "fwd_rev", "hessian"): poisson5d (N = 3000) and poisson100d
  (N = 100); each checked once against trace(jax.hessian) before timing;
- J = ∂r/∂θ by ``residual_fn.jacobian`` (per point), for the residual built with each
  Laplacian method: poisson5d (N = 3500) and poisson100d (N = 150); checked once against
  the matrix-free J v and Jᵀ u;
- J by ``jax.jacrev`` of the whole batched residual, at 10 % of the 5d batch (N = 350) only:
  it costs O(N²) (N = 3500 would need ~140 GiB), compared with the per-point J at that N.

Each group is compiled ahead of time, then timed round-robin (one call of each variant per
round), so the "× folx" ratios come from the same run under the same background load.
Times are medians over the rounds.  Peak memory is XLA's buffer assignment of each compiled
executable (see ``bench/_timing.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _cases  # noqa: E402
from bench._timing import MiB, interleaved_timings, peak_memory  # noqa: E402

# (max rounds, min rounds, time budget in seconds per group) for full / --quick runs: a group
# stops after its budget is spent, but never before its min rounds.
_REPEATS = {
    "laplacian": {False: (21, 5, 30.0), True: (5, 1, 3.0)},
    "jacobian": {False: (9, 3, 60.0), True: (3, 1, 5.0)},
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1.0 else f"{s:.3g} s"


def measure_group(title: str, cases, baseline: int, repeats: int, min_repeats: int,
                  budget: float):
    """Compile and check every case, time them round-robin; rows with ratios to ``baseline``.

    The checking call of each case is its warm-up, so no further warm-up round is run.
    """
    for case in cases:
        _log(f"  compile {case.label}")
        case.compile()
    errors = [case.verify() for case in cases]
    _log(f"  time {title}: up to {repeats} rounds, ~{budget:.0f} s")
    timings = interleaved_timings(cases, repeats=repeats, max_seconds=budget,
                               min_repeats=min_repeats, warmup=0)
    base = timings[baseline].median
    rows = []
    for case, timing, err in zip(cases, timings, errors):
        mem, source = peak_memory(case.compiled)
        rows.append(dict(case=case, timing=timing, ratio=timing.median / base, err=err,
                         mem=mem, mem_source=source))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (same sizes)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="max timed rounds per group (overrides the defaults)")
    parser.add_argument("--no-jacrev", action="store_true",
                        help="skip the jax.jacrev comparison row")
    args = parser.parse_args(argv)

    table = []  # (benchmark, size, P, rows)

    def repeats_for(kind):
        r, r_min, budget = _REPEATS[kind][args.quick]
        r = args.repeats or r
        return r, min(r_min, r), budget

    t_start = time.perf_counter()
    # sizes: always the paper's; --quick only cuts repeats (PINN_NG_BENCH_QUICK is for asv)
    for size in _cases.laplacian_sizes(quick=False):
        _log(f"Laplacian {size.label}")
        net = _cases.build_net(size.problem)
        cases = _cases.laplacian_cases(net, size)
        rows = measure_group(size.label, cases, 0, *repeats_for("laplacian"))
        table.append(("Δu (vmap)", size, net.n_params, rows))
    for size in _cases.jacobian_sizes(quick=False):
        _log(f"Jacobian {size.label}")
        net = _cases.build_net(size.problem)
        cases = [_cases.jacobian_case(net, size, m) for m in _cases.JACOBIAN_METHODS]
        rows = measure_group(size.label, cases, 0, *repeats_for("jacobian"))
        table.append(("J = residual_fn.jacobian", size, net.n_params, rows))
        del cases  # free the compiled executables before the next size
    if not args.no_jacrev:
        size = _cases.jacrev_size(quick=False)
        _log(f"jacrev {size.label}")
        net = _cases.build_net(size.problem)
        cases = [_cases.jacobian_case(net, size, "folx"),
                 _cases.jacrev_case(net, size)]
        rows = measure_group(size.label, cases, 0, *repeats_for("jacobian"))
        rows[0]["label"] = "J = residual_fn.jacobian"
        rows[1]["label"] = "J = jax.jacrev(batched r)"
        table.append((None, size, net.n_params, rows))
    elapsed = time.perf_counter() - t_start

    print(render(table))
    print()
    print(footer(table, args, elapsed))
    return 0


def render(table) -> str:
    head = ("| benchmark | problem | P | N | method | median | min | × folx | rounds "
            "| compile | peak MiB | check |")
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bench, size, p, rows in table:
        for row in rows:
            case, t = row["case"], row["timing"]
            method = case.label.rsplit("/", 1)[-1]
            name = row.get("label", bench)
            ratio = "1 (ref)" if row["ratio"] == 1.0 else f"{row['ratio']:.2f}"
            err = "n/a" if row["err"] != row["err"] else f"{row['err']:.1e}"
            lines.append(
                f"| {name} | {size.problem} | {p:,} | {size.n} | {method} | "
                f"{_fmt_time(t.median)} | {_fmt_time(t.min)} | {ratio} | {t.repeats} | "
                f"{case.compile_s:.2f} s | {row['mem'] / MiB:,.0f} | {err} |"
            )
    return "\n".join(lines)


def footer(table, args, elapsed) -> str:
    import jax

    sources = sorted({row["mem_source"] for *_, rows in table for row in rows})
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parent,
                                check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    dev = jax.devices()[0]
    return "\n".join([
        "× folx: median time / median time of the folx row of the same group (same run, "
        "timed round-robin); the jacrev row is relative to the per-point J at its N.",
        "check: max relative error before timing (Δu vs trace(jax.hessian); J v, Jᵀu vs "
        "residual_fn.jvp/vjp; jacrev vs per-point J).",
        f"peak MiB source: {', '.join(sources)} (xla = compiled.memory_analysis(): "
        "arguments + outputs + temporaries − aliased).",
        f"float64; jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}; git {commit}; "
        f"{'--quick' if args.quick else 'full'} repeats; {elapsed:.0f} s in all.",
    ])


if __name__ == "__main__":
    sys.exit(main())
