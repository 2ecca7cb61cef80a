"""KFAC and KFAC* against ENGD-W: seconds per step and peak memory.

    python bench/kfac_speed.py                      # 5d (N = 3500) and 100d (N = 150)
    python bench/kfac_speed.py --cases 5d --repeats 3

Each case is the paper's problem and net with its batch (5d: N_Ω = 3000, N_∂Ω = 500;
100d: 100 + 50), the published hyper-parameters (config/default.yaml), float64, one BLAS
thread.  One whole optimizer update + parameter update, compiled ahead of time, timed after
``block_until_ready``; all optimizers of a case round-robin, so background load hits them
alike; ratios to ENGD-W (line search) are taken within the run.  Peak memory is XLA's
buffer assignment of the compiled step.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

import pinn_ng
from pinn_ng import models, optim, problems
from pinn_ng.pipeline import config as pcfg
from pinn_ng.residuals import ResidualFn

from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory
from bench.optim_speed import step_fn

#: problem, N_Ω, N_∂Ω of each case
CASES = {"5d": ("poisson5d", 3000, 500), "100d": ("poisson100d", 100, 50)}
#: optimizer label in config/default.yaml (its published hyper-parameters) -> table row;
#: ENGD-W at λ = 1e-8 (any λ > 0 costs the same)
LABELS = {"engd_w": "ENGD-W (line search)", "kfac": "KFAC (line search)", "kfac_star": "KFAC*"}
BASELINE = "ENGD-W (line search)"


def published(name: str) -> dict:
    """Row label -> (optimizer, hyper-parameters on problem ``name``) from the default preset."""
    labels = pcfg.load_yaml(pcfg.preset_path("default"))["optimizers"]
    out = {}
    for label, row in LABELS.items():
        o = labels[label]
        hp = {**o["hparams"], **o.get("per_problem", {}).get(name, {})}
        if label == "engd_w":
            hp = {"damping": 1e-8}
        out[row] = (o["optimizer"], hp)
    return out


def measure(case: str, repeats: int) -> list[tuple]:
    name, n_i, n_b = CASES[case]
    opts = published(name)
    problem = problems.get(name)
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    batch = problem.sample(jax.random.PRNGKey(0), n_i, n_b)
    compiled, mems = {}, {}
    for label, (opt_name, hp) in opts.items():
        opt = optim.make(opt_name, rf, **hp)
        state = opt.init(params)
        c, _ = compile_jitted(step_fn(opt), params, state, batch)
        new, _ = c(params, state, batch)  # check once before timing
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new)):
            raise SystemExit(f"kfac_speed: {label} on {name} gave non-finite parameters")
        compiled[label] = (c, state)
        mems[label] = peak_memory(c)[0] / MiB
    labels = list(compiled)
    times = interleaved_timings(
        [lambda c=compiled[k]: c[0](params, c[1], batch) for k in labels], repeats,
        max_seconds=180)
    t = dict(zip(labels, (x.median for x in times)))
    return [(case, problem.n_params, n_i + n_b, k, t[k], t[k] / t[BASELINE], mems[k],
             mems[k] / mems[BASELINE]) for k in labels]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)
    print(f"device: {jax.devices()[0].device_kind}, float64, median of {args.repeats}\n")
    print("| case | P | N | optimizer | s / step | / ENGD-W | peak MiB | / ENGD-W |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for case in args.cases:
        for c, p, n, label, sec, ratio, mib, mratio in measure(case, args.repeats):
            print(f"| {c} | {p:,} | {n} | {label} | {sec:.4f} | {ratio:.2f}× | {mib:.0f} | "
                  f"{mratio:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
