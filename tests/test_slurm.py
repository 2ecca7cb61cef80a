"""Issue 13, part 1: ``profiles/slurm`` on a real SLURM (``cluster/local-slurm.sh up``).

Marked ``slurm`` (not in the default ``pytest`` run: about 10 minutes on 2 cores).  Run as CI
does (``.ci/run``):

    sudo bash cluster/local-slurm.sh up
    PINN_NG_REQUIRE_SLURM=1 pytest -p no:xdist -o addopts="" -m slurm tests/test_slurm.py
    sudo bash cluster/local-slurm.sh down

Without a SLURM whose node is idle the tests skip, unless ``PINN_NG_REQUIRE_SLURM=1`` (CI),
where they fail instead.  The profile under test is ``profiles/slurm/config.yaml`` itself,
with three changes that any user makes too: the account and partition placeholders filled in
(from ``sacctmgr``/``sinfo``), CPUs and memory per job scaled down to this node, and a shorter
first status check (``slurm-init-seconds-before-status-checks``) so the test waits less.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import records

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SMOKE = REPO / "config" / "smoke.yaml"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
ENV = {**{k: v for k, v in os.environ.items() if k != "PINN_NG_TRACEBACK"},
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
#: Columns that are measurements of time or memory, the only ones allowed to differ between a
#: SLURM run and a local run of the same preset.
MEASURED = re.compile(r"(^|_)(time|seconds|speedup|mib|contended)(_|$)")  # the machine's, not ours

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


def _sh(*cmd, check=True, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def _cluster_problem() -> str | None:
    """Why no SLURM test can run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client (sinfo, sacct): run `sudo bash cluster/local-slurm.sh up`"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return 'the executor plugin is missing: pip install -e ".[slurm]"'
    try:
        states = _sh("sinfo", "-h", "-N", "-o", "%t", timeout=20).stdout.split()
    except (subprocess.SubprocessError, OSError) as err:
        return f"sinfo failed ({err}): run `sudo bash cluster/local-slurm.sh up`"
    if "idle" not in states and "mix" not in states:
        return f"no idle SLURM node (sinfo: {states})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("PINN_NG_REQUIRE_SLURM") == "1":
            pytest.fail(f"PINN_NG_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    account = _sh("sacctmgr", "-n", "-P", "list", "assoc", "user=root",
                  "format=account").stdout.split()
    partition = next(p.rstrip("*") for p in _sh("sinfo", "-h", "-o", "%P").stdout.split()
                     if p.endswith("*"))
    node = _sh("sinfo", "-h", "-N", "-o", "%c %m").stdout.split()
    return {"account": account[0] if account else None, "partition": partition,
            "cpus": int(node[0]), "mem_mb": int(node[1])}


def _profile(cluster, where: Path, **run_resources) -> Path:
    """profiles/slurm/config.yaml with the placeholders filled in, scaled to the node."""
    prof = yaml.safe_load(PROFILE.read_text())
    cpus = max(1, cluster["cpus"] // 2)  # two jobs at a time on the node
    mem = min(4000, cluster["mem_mb"] // 4)

    def fill(res):
        for key, value in list(res.items()):
            if isinstance(value, str) and value.startswith("<"):
                res[key] = cluster["account"] if key == "slurm_account" else \
                    cluster["partition"]
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(res["cpus_per_task"], cpus)
        if "mem_mb" in res:
            res["mem_mb"] = min(res["mem_mb"], mem)

    fill(prof["default-resources"])
    for res in prof["set-resources"].values():
        fill(res)
    prof["set-resources"]["run"].update(run_resources)
    prof["set-threads"] = {rule: min(n, cpus) for rule, n in prof["set-threads"].items()}
    prof["slurm-init-seconds-before-status-checks"] = 5
    prof["latency-wait"] = 5  # one machine: no shared file system to wait for
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.yaml").write_text(yaml.safe_dump(prof))
    return where


def _snakemake(workdir: Path, *args, timeout=1200):
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d",
                           str(workdir), *args], cwd=workdir, capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def _sacct(since: str) -> pd.DataFrame:
    """Every job (allocations only) started since ``since``, as sacct lists them."""
    fields = "JobID,JobName,Comment,State,Timelimit,AllocTRES,Account,Partition,Elapsed"
    out = _sh("sacct", "-X", "-n", "-P", "-S", since, f"--format={fields}").stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=fields.split(","))


def _minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + math.ceil(s / 60)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))


# ------------------------------------------------------------------------------ placeholders


def test_unset_account_stops_before_any_sbatch(cluster, tmp_path):
    since = _now()
    proc = _snakemake(tmp_path / "work", "--profile", str(PROFILE.parent), "--configfile",
                      str(SMOKE), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ours = [x for x in proc.stderr.splitlines() if x.startswith("pinn-ng slurm profile")]
    assert ours == [x for x in proc.stderr.splitlines() if "error" in x.lower()], \
        proc.stderr[-3000:]  # the only error line
    assert len(ours) == 1 and "slurm_account" in ours[0] and "<your account>" in ours[0]
    assert "Traceback" not in proc.stderr
    assert _sacct(since).empty  # nothing was submitted
    assert not (tmp_path / "work" / "results" / "runs").exists()


# ------------------------------------------------------------------------------ the smoke run


@pytest.fixture(scope="module")
def smoke(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-smoke")
    profile = _profile(cluster, root / "profile")
    since = _now()
    t = time.perf_counter()
    proc = _snakemake(root / "slurm", "--profile", str(profile), "--configfile", str(SMOKE))
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-5000:]
    jobs = _sacct(since)
    print(f"\nSLURM smoke run: {seconds:.0f} s; sacct:\n{jobs.to_string()}")
    local = _snakemake(root / "local", "--cores", "2", "--configfile", str(SMOKE))
    assert local.returncode == 0, local.stderr[-5000:]
    plan = pcfg.plan(pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"),
                                pcfg.load_yaml(SMOKE)), check_optimizers=False)
    return root, jobs, plan, cluster


def test_each_run_is_one_slurm_job_with_its_budget_time_limit(smoke):
    _, jobs, plan, cluster = smoke
    assert (jobs.State == "COMPLETED").all(), jobs
    runs = jobs[jobs.Comment.str.startswith("rule_run_wildcards_")]
    ids = runs.Comment.str.removeprefix("rule_run_wildcards_")
    assert sorted(ids) == sorted(plan.runs)  # one job per run, none twice
    assert len(set(runs.JobID)) == len(runs)
    for rid, limit, tres in zip(ids, runs.Timelimit, runs.AllocTRES):
        assert _minutes(limit) == pcfg.budget_minutes(plan.runs[rid]) == 17, (rid, limit)
        assert "gres/gpu=1" in tres, tres  # the profile's `gpu: 1`, on the stand-in GRES
    assert (jobs.Account == cluster["account"]).all()  # filled in for the placeholder
    assert (jobs.Partition == cluster["partition"]).all()
    table = jobs[jobs.Comment == "rule_nystrom_table"]
    assert len(table) == 1 and "gres/gpu=1" in table.AllocTRES.iloc[0]
    assert _minutes(table.Timelimit.iloc[0]) == 60  # the profile's runtime for it
    # the tuning stage: every trial and every tuned run its own job on one GPU (no groups)
    trials = jobs[jobs.Comment.str.startswith("rule_tune_trial_wildcards_")]
    tuned = jobs[jobs.Comment.str.startswith("rule_tuned_run_wildcards_")]
    want = sorted(t for st in plan.studies.values() for k in st.stages for t in st.trial_ids(k))
    # the comment is rule_tune_trial_wildcards_<study>_<stage>_<trial>: one job per trial
    assert sorted(t for c in trials.Comment for t in want if c.endswith(f"_{t}")) == want, \
        trials
    assert len(trials) == len(want), trials
    assert sorted(tuned.Comment.str.removeprefix("rule_tuned_run_wildcards_")) == \
        sorted(plan.tuned), tuned
    assert len(want) == 8 and len(plan.tuned) == 4  # config/smoke.yaml's study
    for part in (trials, tuned):
        assert part.AllocTRES.str.contains("gres/gpu=1").all(), part
    gpu = runs.index.union(table.index).union(trials.index).union(tuned.index)
    others = jobs[~jobs.index.isin(gpu)]
    assert len(others) > 0
    assert not others.AllocTRES.str.contains("gres/gpu").any()  # tables, figures: no GPU


def test_tables_and_figures_equal_a_local_run_but_for_timings(smoke):
    root, _, plan, _ = smoke
    compared = 0
    for name in ("curves", "summary", "summary_by_config", "experiments", "nystrom_table"):
        a = pd.read_csv(root / "slurm" / "results" / f"{name}.csv")
        b = pd.read_csv(root / "local" / "results" / f"{name}.csv")
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        same = [c for c in a.columns if not MEASURED.search(c)]
        # The same float64 arithmetic on the same CPU, one thread each: identical numbers
        # (rtol 1e-12 only absorbs a different XLA thread split, which did not occur here).
        pd.testing.assert_frame_equal(a[same], b[same], check_exact=False, rtol=1e-12,
                                      obj=name)
        compared += len(same)
    assert compared > 50
    summary = pd.read_csv(root / "slurm" / "results" / "summary.csv")
    assert {"final_l2", "best_l2", "steps"} <= set(summary.columns)  # not all "timings"
    figs = sorted(p.name for p in (root / "slurm" / "figures").glob("*.png"))
    assert figs == sorted(p.name for p in (root / "local" / "figures").glob("*.png"))
    # every figure the plan names (the experiments' and the tuning study's), and no other
    assert figs == sorted(f"{name}.png" for name in plan.figures + plan.tuning_figures)
    assert len(figs) == 8  # 6 of the experiments, 2 of the tuning study
    from PIL import Image

    for fig in figs:  # drawn from the same tables but for the time axes: same canvas
        with Image.open(root / "slurm" / "figures" / fig) as a, \
                Image.open(root / "local" / "figures" / fig) as b:
            assert a.size == b.size, fig


# ------------------------------------------------------------------------------ a failed job


def test_a_run_killed_by_its_time_limit_is_reported_and_rerun(cluster, tmp_path):
    """A time limit too short for the run: SLURM ends the job (TIMEOUT), no record is
    written, Snakemake names the failed run and its SLURM log and exits non-zero, and the
    same command again resubmits exactly that run (README, "On a SLURM cluster")."""
    preset = tmp_path / "long.yaml"
    preset.write_text(yaml.safe_dump({
        "experiments": {"convergence": {"problems": ["poisson2d"], "optimizers": ["adam"],
                                        "replicates": 1, "tuned": [],
                                        "budget": {"steps": None, "seconds": 240}},
                        "scaling": None, "nystrom": None, "effective_dimension": None},
        "nystrom_table": None, "tuning": {"studies": {"tunesmoke": None}}}))
    args = ["--configfile", str(SMOKE), str(preset)]
    plan = pcfg.plan(pcfg.merge(pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"),
                                           pcfg.load_yaml(SMOKE)), pcfg.load_yaml(preset)),
                     check_optimizers=False)
    (rid,) = plan.runs
    assert pcfg.budget_minutes(plan.runs[rid]) == 21  # what the Snakefile would ask for
    # ... but 1 minute it is, and no signal ahead of it (the profile's 2 minutes exceed it)
    profile = _profile(cluster, tmp_path / "profile", runtime=1, slurm_extra="''")
    work = tmp_path / "work"
    since = _now()
    proc = _snakemake(work, "runs", "--profile", str(profile), *args, timeout=600)
    assert proc.returncode != 0
    jobs = _sacct(since)
    assert len(jobs) == 1, jobs
    assert jobs.State.iloc[0] == "TIMEOUT" and _minutes(jobs.Timelimit.iloc[0]) == 1, jobs
    jobid = jobs.JobID.iloc[0]
    log = proc.stderr
    # Snakemake's report: the rule, the SLURM job and its state, the run's outputs, both logs
    slurm_log = work / ".snakemake" / "slurm_logs" / "rule_run" / rid / f"{jobid}.log"
    assert re.search(rf"Error in rule run:\s+message: SLURM-job '{jobid}' failed, SLURM status "
                     rf"is: 'TIMEOUT'.*?results/runs/{rid}/meta.json.*?{re.escape(str(slurm_log))}",
                     log, re.S), log[-4000:]
    assert f"*** JOB {jobid} ON" in slurm_log.read_text()
    assert "DUE TO TIME LIMIT" in slurm_log.read_text()
    # SLURM's SIGTERM reached the run: it said so, and left no record (only its checkpoint)
    assert "interrupted" in (work / "results" / "logs" / f"{rid}.log").read_text()
    assert "no record written" in (work / "results" / "logs" / f"{rid}.log").read_text()
    assert not records.is_complete(work / "results" / "runs" / rid)
    assert not (work / "results" / "runs" / rid / records.META).exists()
    dry = _snakemake(work, "runs", "-n", "--profile", str(profile), *args, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert re.search(r"^run\s+1\s*$", dry.stdout + dry.stderr, re.M), dry.stdout[-3000:]


def test_a_run_stopped_by_its_time_limit_resumes_and_finishes(cluster, tmp_path):
    """A run whose budget needs several jobs: each is stopped by its 1-minute time limit
    (SLURM's SIGTERM; the run saves a checkpoint after its current step), Snakemake's
    retries resubmit it, and each job resumes where the last one stopped.  The record of the
    last one lists every segment, and the timed seconds of all of them make the budget."""
    preset = tmp_path / "long.yaml"
    budget = 75
    preset.write_text(yaml.safe_dump({
        # an evaluation every 1000 steps: the clock (and the budget) runs for most of a job
        "experiments": {"convergence": {"problems": ["poisson2d"], "optimizers": ["adam"],
                                        "replicates": 1, "tuned": [], "eval_every": 1000,
                                        "budget": {"steps": None, "seconds": budget}},
                        "scaling": None, "nystrom": None, "effective_dimension": None},
        "nystrom_table": None, "tuning": {"studies": {"tunesmoke": None}}}))
    args = ["--configfile", str(SMOKE), str(preset)]
    plan = pcfg.plan(pcfg.merge(pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"),
                                           pcfg.load_yaml(SMOKE)), pcfg.load_yaml(preset)),
                     check_optimizers=False)
    (rid,) = plan.runs
    # the profile's signal ahead of the limit needs a limit longer than 2 minutes: here the
    # limit's own SIGTERM (then SIGKILL after KillWait) is what stops each job
    profile = _profile(cluster, tmp_path / "profile", runtime=1, slurm_extra="''")
    work = tmp_path / "work"
    since = _now()
    proc = _snakemake(work, "runs", "--profile", str(profile), "--retries", "8", *args,
                      timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = _sacct(since)
    assert len(jobs) >= 2 and jobs.State.iloc[-1] == "COMPLETED", jobs
    assert (jobs.State.iloc[:-1] == "TIMEOUT").all(), jobs
    run_dir = work / "results" / "runs" / rid
    assert records.is_complete(run_dir) and not (run_dir / "checkpoint").exists()
    meta = json.loads((run_dir / records.META).read_text())
    assert meta["status"] == "finished" and meta["stopped_by"] == "max_seconds"
    segs = meta["segments"]
    assert len(segs) >= 2, segs
    assert all(s["ended"] in ("SIGTERM", "lost") for s in segs[:-1]), segs
    assert segs[-1]["ended"] == "max_seconds"
    for a, b in zip(segs, segs[1:]):  # each job starts where the last saved checkpoint was
        assert b["start_step"] <= a["end_step"] and b["start_step"] > 0, segs
    # a lost segment counts up to its last checkpoint: its later steps were redone
    assert math.isclose(sum(s["seconds"] for s in segs), meta["seconds"], rel_tol=1e-9)
    assert meta["seconds"] >= budget and meta["checkpoint"]["resumed_from"] > 0
    curve = pd.read_csv(run_dir / records.CURVE)
    assert curve.step.is_monotonic_increasing and curve.step.iloc[-1] == meta["steps"]


def test_profile_signals_ahead_of_the_time_limit():
    prof = yaml.safe_load(PROFILE.read_text())
    extra = prof["default-resources"]["slurm_extra"]
    m = re.fullmatch(r"'--signal=TERM@(\d+)'", extra)
    assert m and 60 <= int(m.group(1)) <= 300, extra  # SLURM may signal up to 60 s early
