"""Timing integrity: the contention probes, their rule, the pinning of timed jobs to cores of
their own, and the flag in the tables and figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from pinn_ng.pipeline import contention, gather, records
from pinn_ng.pipeline.errors import UserError

LINUX = os.path.isdir("/proc/self/task")


def _snap(wall, cpu, steal, total, sched, threads=3, affinity=(0, 1)):
    return {"wall": wall, "cpu": cpu, "affinity": list(affinity), "threads": threads,
            "loadavg": [1.0, 1.0, 1.0], "stat": {"total": total, "steal": steal},
            "schedstat": sched}


def test_probes_from_synthetic_snapshots():
    before = _snap(10.0, 1.0, steal=100, total=1000, sched={"1": (1_000, 500)})
    after = _snap(14.0, 7.0, steal=150, total=2000, threads=5,
                  sched={"1": (3_000_001_000, 1_000_000_500), "2": (1e9, 0)})
    samples = [{"threads": 7, "other_runnable": 0}, {"threads": 4, "other_runnable": 3},
               {"threads": 4, "other_runnable": None}]
    p = contention.probes(before, after, samples, step_seconds=[1.0, 1.0, 2.0, 4.0])
    assert p["wall_seconds"] == 4.0 and p["cpu_seconds"] == 6.0
    assert p["cpu_per_wall"] == pytest.approx(1.5, rel=1e-12)
    assert p["threads_max"] == 7 and p["cores"] == 2
    assert p["steal_share"] == pytest.approx(0.05, rel=1e-12)
    # thread 1: 3 s run, 1 s waiting; thread 2 (started later): 1 s run
    assert p["run_seconds"] == pytest.approx(4.0, rel=1e-12)
    assert p["runqueue_wait_seconds"] == pytest.approx(1.0, rel=1e-12)
    assert p["wait_share"] == pytest.approx(0.2, rel=1e-12)
    assert p["samples"] == 2 and p["other_runnable_mean"] == 1.5
    assert p["busy_sample_share"] == 0.5  # every core is the run's: any other task is one too many
    spread = p["step_seconds"]
    assert spread["n"] == 4 and spread["median"] == 1.5
    assert spread["max_over_median"] == pytest.approx(4 / 1.5, rel=1e-12)


@pytest.mark.parametrize("load, contended", [
    ({"wait_share": 0.02, "steal_share": 0.0}, False),
    ({"wait_share": 0.33, "steal_share": 0.0}, False),  # a run alone: its own threads queue
    ({"wait_share": 0.40, "steal_share": 0.10}, False),  # the thresholds themselves pass
    ({"wait_share": 0.49, "steal_share": 0.0}, True),  # two busy loops, an otherwise quiet machine
    ({"wait_share": 0.82, "steal_share": 0.0}, True),  # next to more work
    ({"wait_share": 0.0, "steal_share": 0.25}, True),
    ({"wait_share": None, "steal_share": None}, False),  # no /proc: never flagged
])
def test_rule_on_synthetic_probes(load, contended):
    flag, why = contention.verdict(load)
    assert flag is contended
    assert (why is not None) is contended
    if contended:
        assert "\n" not in why and ("waited" in why or "steal" in why)


def test_rule_thresholds_can_be_overridden():
    assert contention.verdict({"wait_share": 0.05}, {"wait_share": 0.01})[0] is True
    assert contention.verdict({"wait_share": 0.05})[0] is False


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_monitor_probes_this_process():
    with contention.Monitor(interval=0.05) as m:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
    p = m.probes([0.1, 0.1])
    assert p["cpu_seconds"] > 0 and p["wall_seconds"] >= 0.3
    assert p["threads_max"] >= 2  # this thread and the sampler
    assert p["samples"] >= 2 and p["other_runnable_mean"] >= 0
    assert 0.0 <= p["wait_share"] <= 1.0 and p["run_seconds"] > 0
    assert p["affinity"] == sorted(os.sched_getaffinity(0))


_CLAIM = ("import sys, time; from pinn_ng.pipeline import contention; "
          "print(contention.claim_cores(1, sys.argv[1]), flush=True); time.sleep(float(sys.argv[2]))")


@pytest.mark.skipif(not LINUX or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_timed_jobs_given_one_core_each_get_their_own(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", _CLAIM, str(tmp_path), "3"],
                             stdout=subprocess.PIPE, text=True)
    try:
        a = json.loads(first.stdout.readline())
        b = json.loads(subprocess.run([sys.executable, "-c", _CLAIM, str(tmp_path), "0"],
                                      capture_output=True, text=True, check=True).stdout)
    finally:
        first.kill()
        first.wait()
    assert len(a) == 1 and len(b) == 1 and a != b
    # all cores asked for: nothing to pin
    assert contention.claim_cores(len(os.sched_getaffinity(0)), tmp_path) is None


def test_on_contention_values():
    assert contention.check_on_contention("fail") == "fail"
    with pytest.raises(UserError, match="on_contention must be one of"):
        contention.check_on_contention("ignore")


def _record(runs_dir, name, contended):
    spec = {"problem": "poisson2d", "label": "adam", "display": "Adam", "optimizer": "adam",
            "hparams": {}, "widths": [2, 6, 1], "n_interior": 20, "n_boundary": 8,
            "replicate": 0, "data_seed": 0, "model_seed": 1, "max_steps": 10,
            "max_seconds": None, "eval_every": 5, "dtype": "float64"}
    rows = [{"step": s, "time": 0.1 * s, "loss": 1.0, "l2": 1.0 / (1 + s), "rms_l2": 1.0,
             "rel_l2": 1.0, "step_size": 1.0} for s in (0, 5, 10)]
    meta = {"run_id": name, "spec": spec, "N": 28, "n_params": 25, "steps": 10,
            "seconds": 1.0, "seconds_per_step": 0.1, "compile_seconds": 1.0,
            "diverged": False, "reason": None, "stopped_by": "max_steps",
            "final": {"l2": 1 / 11, "rel_l2": 1.0}, "best_l2": 1 / 11}
    if contended is not None:
        meta["contended"] = contended
    records.write_record(runs_dir / name, rows, list(rows[0]), meta)


def test_summary_has_the_contended_column(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, "quiet", False)
    _record(runs, "loaded", True)
    _record(runs, "old", None)  # a record from before the probes: unknown, not False
    gather.gather(runs, tmp_path)
    summ = pd.read_csv(tmp_path / "summary.csv").set_index("run_id")
    assert "contended" in gather.SUMMARY_COLUMNS
    assert summ.loc["loaded", "contended"] in (True, "True")
    assert summ.loc["quiet", "contended"] in (False, "False")
    assert pd.isna(summ.loc["old", "contended"])


def test_convergence_figure_marks_contended_runs(tmp_path):
    from pinn_ng.pipeline import figures

    runs = tmp_path / "runs"
    _record(runs, "quiet", False)
    _record(runs, "loaded", True)
    gather.gather(runs, tmp_path, {"experiments": {"convergence": ["quiet", "loaded"]},
                                   "kinds": {"convergence": "convergence"}})
    tables = figures.load(tmp_path)
    plt, sns = figures._setup()
    fig = figures.fig_convergence(tables, plt, sns, figures._palette(tables), "poisson2d")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("dashed: contended (1 run)" in t for t in labels)
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) >= 2  # the contended replicate and its legend entry
    plt.close(fig)


_HOG = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_run_next_to_a_hog_on_its_core_is_contended(tmp_path):
    """A real ``pinn-ng run`` pinned to one core with two busy loops pinned to the same core."""
    core = min(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG, str(core)]) for _ in range(2)]
    try:
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "pinn_ng.cli", "run", "--no-progress", "--problem",
             "poisson2d", "--optimizer", "adam", "--hparam", "learning_rate=1e-3",
             "--widths", "2,8,1", "--n-interior", "20", "--n-boundary", "8",
             "--max-steps", "30", "--out", str(out)],
            capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}),
            timeout=300)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    load = meta["machine_load"]
    assert meta["contended"] is True and load["cores"] == 1
    assert load["wait_share"] > 0.5  # two hogs and the run share one core: ~2/3 waiting
    assert "Traceback" not in proc.stderr
