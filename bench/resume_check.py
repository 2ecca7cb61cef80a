"""Kill a run with SIGTERM (twice), rerun it each time, and compare it with an uninterrupted one.

    python bench/resume_check.py --out /tmp/resume            # 5d ENGD-W at the paper's size
    python bench/resume_check.py --out /tmp/resume --kill-at 15 30 -- --max-steps 40

Runs ``pinn-ng run`` twice with the same arguments: once straight through (``<out>/full``),
once (``<out>/resumed``) sent SIGTERM as soon as its checkpoint has reached each step of
``--kill-at`` and rerun with the same command each time.  The step is read from the
checkpoint's ``progress.json`` (``--checkpoint-every 1`` saves after nearly every step), so
the kill lands at that step or a little after it.  Prints the largest absolute difference of
the final parameters (``final_params.npz``) and of every column of ``curve.csv`` except the
timing columns, the segments the resumed run recorded, and exits 1 unless both are zero.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PAPER_5D = ["--problem", "poisson5d", "--optimizer", "engd_woodbury",
            "--hparam", "damping=3.17e-12", "--hparam", "learning_rate=line_search",
            "--max-steps", "40", "--eval-every", "5", "--checkpoint-every", "1"]
#: curve.csv columns that are measurements of time, allowed to differ between the two runs
TIMING = ("time",)


def _command(out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pinn_ng.cli", "run", "--no-progress", *extra,
            "--out", str(out)]


def _checkpoint_step(out: Path) -> int:
    for name in ("checkpoint", ".checkpoint.old"):
        try:
            return int(json.loads((out / name / "progress.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue
    return -1


def _run_killed_at(out: Path, extra: list[str], step: int | None, log) -> int:
    """One process of the resumed run; SIGTERM once its checkpoint reaches ``step``."""
    start = _checkpoint_step(out)
    proc = subprocess.Popen(_command(out, extra), stderr=log, stdout=log)
    while step is not None and proc.poll() is None:
        now = _checkpoint_step(out)
        if now >= step and now > start:  # a checkpoint of this process, not the last one
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    return proc.wait()


def _curve(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def compare(full: Path, resumed: Path) -> dict:
    a, b = np.load(full / "final_params.npz"), np.load(resumed / "final_params.npz")
    if sorted(a.files) != sorted(b.files):
        raise SystemExit(f"different parameter sets: {a.files} vs {b.files}")
    identical = all(np.array_equal(a[k], b[k]) for k in a.files)
    numeric = [k for k in a.files if a[k].dtype.kind in "fc" and a[k].size]
    params = max((float(np.max(np.abs(a[k] - b[k]))) for k in numeric), default=0.0)
    ca, cb = _curve(full / "curve.csv"), _curve(resumed / "curve.csv")
    cols = [c for c in ca.columns if c not in TIMING]
    if list(ca.columns) != list(cb.columns) or len(ca) != len(cb):
        raise SystemExit(f"curves differ in shape: {ca.shape} {list(ca.columns)} vs "
                         f"{cb.shape} {list(cb.columns)}")
    diffs = {}
    for c in cols:
        x, y = ca[c].to_numpy(dtype=float), cb[c].to_numpy(dtype=float)
        both_nan = np.isnan(x) & np.isnan(y)
        d = np.where(both_nan, 0.0, np.abs(x - y))
        diffs[c] = float(np.nanmax(np.where(np.isnan(d), np.inf, d)))
    return {"params_max_abs_diff": params, "params_bit_identical": identical,
            "curve_rows": len(ca), "curve_max_abs_diff": diffs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="working directory (full/, resumed/, logs)")
    ap.add_argument("--kill-at", type=int, nargs="*", default=[15, 30])
    ap.add_argument("--sequential", action="store_true",
                    help="run the uninterrupted run first (default: side by side)")
    ap.add_argument("run_args", nargs="*", help="pinn-ng run arguments after -- (default: "
                    "the paper-size 5d ENGD-W run, 40 steps)")
    args = ap.parse_args(argv)
    extra = args.run_args or PAPER_5D
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full, resumed = out / "full", out / "resumed"
    t0 = time.time()
    with open(out / "full.log", "w") as flog, open(out / "resumed.log", "w") as rlog:
        straight = subprocess.Popen(_command(full, extra), stderr=flog, stdout=flog)
        if args.sequential:
            straight.wait()
        codes = []
        for step in [*args.kill_at, None]:
            codes.append(_run_killed_at(resumed, extra, step, rlog))
            print(f"resumed run: process {len(codes)} exited {codes[-1]} (checkpoint at step "
                  f"{_checkpoint_step(resumed)})", flush=True)
        if straight.wait() != 0:
            raise SystemExit(f"the uninterrupted run failed; see {out / 'full.log'}")
    if codes[-1] != 0:
        raise SystemExit(f"the resumed run failed; see {out / 'resumed.log'}")
    result = compare(full, resumed)
    meta = json.loads((resumed / "meta.json").read_text())
    result["segments"] = meta["segments"]
    result["exit_statuses"] = codes
    result["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))
    same = result["params_bit_identical"] and not any(result["curve_max_abs_diff"].values())
    print("bit-identical: params and curve (timing columns excluded)" if same else
          "DIFFERENT", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
