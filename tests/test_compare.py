"""pinn-ng compare: the paper's numbers next to ours, computed from the gathered tables."""

import subprocess
import sys

import pandas as pd

from pinn_ng.pipeline import compare


def _tables(tmp_path, with_engd=True):
    runs = [  # run_id, label, kind, N, steps, seconds, final_l2, median s/step
        ("c_engd_w", "engd_w", "convergence", 3500, 40, 120.0, 4e-5, 3.0),
        ("c_spring", "spring", "convergence", 3500, 44, 120.0, 9e-5, 2.7),
        ("c_adam", "adam", "convergence", 3500, 900, 120.0, 3e-2, 0.13),
        ("s_engd_w", "engd_w", "scaling", 3500, 3, 9.0, 1.0, 3.0),
        ("s_lstsq", "engd_lstsq", "scaling", 3500, 1, 300.0, 1.0, 300.0),
        ("n_exact", "engd_w", "nystrom", 1000, 30, 45.0, 1e-3, 1.5),
        ("n_gpu", "engd_w_nystrom_gpu", "nystrom", 1000, 60, 45.0, 2e-3, 0.75),
        ("d_engd_w", "engd_w", "effective_dimension", 3500, 4, 12.0, 1e-3, 3.0),
    ]
    if with_engd:
        runs.append(("c_engd", "engd", "convergence", 3500, 6, 120.0, 2e-3, 20.0))
    summary = pd.DataFrame([{
        "run_id": r, "problem": "poisson5d", "label": lab, "display": lab, "N": n, "P": 10065,
        "replicate": 0, "steps": st, "seconds": sec, "seconds_per_step": sec / st,
        "median_seconds_per_step": med, "final_l2": l2, "best_l2": l2} for
        r, lab, _, n, st, sec, l2, med in runs])
    exps = pd.DataFrame([{"experiment": k, "kind": k, "run_id": r} for r, _, k, *_ in runs])
    curves = []
    for r, lab, kind, n, st, sec, l2, _ in runs:
        for i in range(st + 1):
            curves.append({"run_id": r, "step": i, "time": sec * i / st,
                           "l2": 1.0 * (l2 / 1.0) ** (i / st),
                           "effective_dimension": 0.7 * n - 10 * i if kind ==
                           "effective_dimension" else float("nan")})
    summary.to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame(curves).to_csv(tmp_path / "curves.csv", index=False)
    exps.to_csv(tmp_path / "experiments.csv", index=False)
    return tmp_path


def test_comparison_numbers_come_from_the_tables(tmp_path):
    text, rows = compare.comparison(_tables(tmp_path))
    by = {r["claim"]: r for r in rows}
    it = by["ENGD-W vs ENGD iterations in the same budget"]
    assert it["paper"].startswith("5509 vs 122") and "40 vs 6 in 120 s (6.7x" in it["ours"]
    lst = by["seconds per step, ENGD (least squares, as the paper's code) / ENGD-W"]
    assert "300.00 s / 3.00 s = 100.0x" in lst["ours"]
    # ENGD-W's curve falls geometrically from 1 to 4e-5 over 40 steps in 120 s: it first
    # reaches 5.7e-5 at step ceil(40 · log(5.7e-5)/log(4e-5)) = 39, at 117 s
    reach = by["ENGD-W: time and steps to the paper's ENGD final L2 (5.7e-5)"]
    assert reach["ours"] == "117 s, 39 steps"
    assert "not within" in by["SPRING: time and steps to the paper's ENGD final L2 (5.7e-5)"]["ours"]
    assert by["final L2, Adam"]["ours"].startswith("3.00e-02") and by["final L2, Adam"]["paper"] == "3.10e-03"
    assert by["final L2, SGD"]["ours"] == "not run in this preset"
    ny = by["Nyström (GPU-efficient, 10 %) speed-up per step at N = 1000"]
    assert ny["ours"].startswith("2.00x")
    d = by["d_eff/N along engd_w, N = 3500"]
    assert d["ours"].startswith("min 69%")  # (0.7·3500 − 40)/3500 = 68.9 %
    assert text.startswith("# The paper's headline results") and text.count("\n| ") == len(rows) + 1  # + header


def test_comparison_without_engd_says_so(tmp_path):
    _, rows = compare.comparison(_tables(tmp_path, with_engd=False))
    by = {r["claim"]: r for r in rows}
    assert by["ENGD-W vs ENGD iterations in the same budget"]["ours"] == "not run in this preset"
    assert by["final L2, ENGD"]["ours"] == "not run in this preset"


def test_compare_cli_without_tables_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pinn_ng.cli", "compare", "--results",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pinn-ng gather" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_hyperparameter_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pinn_ng.cli", "run", "--problem", "poisson2d",
                           "--optimizer", "engd", "--hparam", "solver=qr", "--hparam", "damping=1e-8",
                           "--max-steps", "1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pinn-ng run: error: optimizer 'engd': unknown ENGD solver 'qr'; valid: ['cholesky', 'lstsq']"]
    assert not (tmp_path / "r").exists()  # nothing written
    proc = subprocess.run([sys.executable, "-m", "pinn_ng.cli", "run", "--problem", "poisson2d",
                           "--optimizer", "engd", "--max-steps", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: optimizer 'engd'" in proc.stderr and "damping" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
