"""Checkpoint and resume (pinn_ng.pipeline.checkpoint, the loop's ``checkpoint``/``stop``).

A run stopped between steps (what the CLI does on SIGTERM/SIGINT) and rerun with the same
spec and directory ends with bit-identical parameters and curve; the segments and the time
budget add up over processes; an unreadable checkpoint is set aside and the run starts over,
recorded; one written by another spec is one line.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from pinn_ng import models, optim, problems, train
from pinn_ng.pipeline import checkpoint, records, runner
from pinn_ng.pipeline.errors import UserError
from pinn_ng.residuals import ResidualFn

#: ENGD-W with the line search: an optax chain of NamedTuple states, the paper's 2d problem
SPEC = {"problem": "poisson2d", "optimizer": "engd_woodbury",
        "hparams": {"damping": 1e-8, "learning_rate": "line_search"},
        "widths": [2, 8, 1], "n_interior": 30, "n_boundary": 8, "max_steps": 9,
        "eval_every": 2, "checkpoint_every": 0}


def _stop_at(step):
    """A ``stop`` that asks for a stop when polled before step ``step`` (0-based), as a
    SIGTERM arriving during step ``step - 1`` would."""
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return "SIGTERM" if calls["n"] == step + 1 else None

    return stop


def _params(run_dir):
    from pinn_ng.pipeline import params_io

    arrays = np.load(Path(run_dir) / params_io.FILE)
    return {k: arrays[k] for k in arrays.files if arrays[k].dtype.kind == "f"}


def _curve(run_dir):
    return pd.read_csv(Path(run_dir) / records.CURVE).drop(columns=["time"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    meta = runner.run(SPEC, out, progress=False)
    return out, meta


def test_resume_is_bit_identical_and_records_segments(uninterrupted, tmp_path):
    full, full_meta = uninterrupted
    out = tmp_path / "run"
    for stop_at in (3, 7):
        with pytest.raises(runner.RunInterrupted, match=f"SIGTERM at step {stop_at}"):
            runner.run(SPEC, out, progress=False, stop=_stop_at(stop_at - _done(out)))
        assert not records.is_complete(out)  # an interrupted run never claims to be finished
        assert (out / "checkpoint" / checkpoint.PROGRESS).is_file()
    meta = runner.run(SPEC, out, progress=False)
    assert meta["status"] == "finished" and meta["steps"] == SPEC["max_steps"]
    assert not (out / "checkpoint").exists()  # removed once the record is written
    a, b = _params(full), _params(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(_curve(full), _curve(out), check_exact=True)
    segs = meta["segments"]
    assert [(s["start_step"], s["end_step"], s["ended"]) for s in segs] == [
        (0, 3, "SIGTERM"), (3, 7, "SIGTERM"), (7, 9, "max_steps")]
    assert math.isclose(sum(s["seconds"] for s in segs), meta["seconds"], rel_tol=1e-12)
    assert meta["checkpoint"]["resumed_from"] == 7
    assert full_meta["segments"] == [{"start_step": 0, "end_step": 9, "ended": "max_steps",
                                      "seconds": full_meta["seconds"]}]
    assert meta["events"] == full_meta["events"]


def _done(out):
    p = Path(out) / "checkpoint" / checkpoint.PROGRESS
    return json.loads(p.read_text())["step"] if p.is_file() else 0


class _MemoryCheckpoint:
    """An in-memory checkpoint with the loop's interface (no orbax): state kept as is."""

    def __init__(self, every_seconds=None):
        self.every_seconds, self.saved, self.saves = every_seconds, None, 0

    def load(self, like_state):
        return self.saved

    def save(self, state, progress):
        self.saved = (state, json.loads(json.dumps(progress)))
        self.saves += 1


def _train(budget, ckpt, stop=None):
    problem = problems.get("poisson2d")
    init, apply = models.make("mlp", [2, 6, 1])
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    opt = optim.make("adam", rf, learning_rate=1e-3)
    return train.train(problem, apply, params, opt, rf, uses_grads=True, n_interior=20,
                       n_boundary=4, eval_every=5, progress=False, log=lambda m: None,
                       checkpoint=ckpt, stop=stop, **budget)


def test_time_budget_counts_the_timed_seconds_of_all_segments():
    ckpt = _MemoryCheckpoint()
    first = _train({"max_seconds": 1e6}, ckpt, stop=_stop_at(4))
    assert first.stopped_by == "interrupted" and first.steps == 4 and ckpt.saves == 1
    spent = first.seconds
    assert spent == sum(first.step_seconds) and spent > 0
    # a budget already used up: the resumed process takes no step
    again = _train({"max_seconds": spent}, ckpt)
    assert again.steps == 4 and again.stopped_by == "max_seconds"
    assert again.seconds == spent
    # a little more budget: it continues from step 4 and stops on the total
    more = _train({"max_seconds": spent * 1.0000001, "max_steps": 50}, ckpt)
    assert more.steps > 4 and more.stopped_by in ("max_seconds", "max_steps")
    assert more.seconds == pytest.approx(sum(more.step_seconds), rel=1e-12)
    assert [s["start_step"] for s in more.segments] == [0, 4]  # the empty one was not saved
    assert math.isclose(sum(s["seconds"] for s in more.segments), more.seconds,
                        rel_tol=1e-12)


def test_periodic_checkpoint_and_a_lost_segment():
    ckpt = _MemoryCheckpoint(every_seconds=1e-9)  # save before every step but the first
    res = _train({"max_steps": 6}, ckpt)
    assert res.stopped_by == "max_steps" and ckpt.saves == 5
    state, progress = ckpt.saved
    assert progress["step"] == 5 and progress["segments"][-1]["ended"] == "running"
    # a process killed without saving (SIGKILL, out of memory): the next one says so
    again = _train({"max_steps": 6}, ckpt)
    assert [s["ended"] for s in again.segments] == ["lost", "max_steps"]
    assert again.segments[0]["end_step"] == 5 and again.steps == 6


def test_unreadable_checkpoint_starts_over_recorded(tmp_path, capsys):
    spec = {**SPEC, "optimizer": "adam", "hparams": {"learning_rate": 1e-3}}
    out = tmp_path / "run"
    with pytest.raises(runner.RunInterrupted):
        runner.run(spec, out, progress=False, stop=_stop_at(4))
    state_files = [p for p in (out / "checkpoint" / checkpoint.STATE).rglob("*")
                   if p.is_file()]
    assert state_files
    for p in state_files:  # truncated: as a full disk or a killed copy leaves it
        p.write_bytes(p.read_bytes()[:3])
    meta = runner.run(spec, out, progress=False)
    assert meta["status"] == "finished" and meta["steps"] == spec["max_steps"]
    assert "cannot restore the state" in meta["checkpoint"]["discarded"]
    assert meta["checkpoint"]["resumed_from"] is None
    assert [s["start_step"] for s in meta["segments"]] == [0]
    assert (out / "checkpoint.unusable").is_dir()
    assert _curve(out).step.tolist() == [0, 2, 4, 6, 8, 9]
    err = capsys.readouterr().err
    assert "warning: unusable checkpoint" in err


@pytest.mark.parametrize("damage", ["garbage", "missing", "format"])
def test_checkpoint_progress_damage_is_one_line(tmp_path, damage):
    ck = checkpoint.Checkpointer(tmp_path / "checkpoint", identity={"a": 1})
    like = {"x": np.arange(3.0)}
    ck.save(like, {"step": 1})
    progress = tmp_path / "checkpoint" / checkpoint.PROGRESS
    if damage == "garbage":
        progress.write_text('{"step": 1, "form')
    elif damage == "missing":
        progress.unlink()
    else:
        progress.write_text(json.dumps({"format": 999, "identity": {"a": 1}}))
    with pytest.raises(checkpoint.CheckpointError) as info:
        ck.load(like)
    assert "\n" not in str(info.value) and "checkpoint" in str(info.value)


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "c", identity={"problem": "p", "n": 3})
    state = {"params": [np.arange(4.0), np.asarray(2.5)], "k": np.asarray(7, np.int32)}
    ck.save(state, {"step": 3, "rows": [{"l2": float("nan"), "loss": 0.1 + 0.2}]})
    ck.save(state, {"step": 4, "rows": [{"l2": float("nan"), "loss": 0.1 + 0.2}]})  # swap
    got, progress = ck.load(state)
    assert progress["step"] == 4 and progress["rows"][0]["loss"] == 0.1 + 0.2
    assert math.isnan(progress["rows"][0]["l2"])
    assert np.array_equal(got["params"][0], state["params"][0]) and got["k"] == 7
    assert not (tmp_path / ".c.old").exists()
    other = checkpoint.Checkpointer(tmp_path / "c", identity={"problem": "p", "n": 4})
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"differs in \['n'\]"):
        other.load(state)
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        ck.load({"params": [np.arange(5.0), np.asarray(0.0)], "k": np.asarray(0, np.int32)})
    # killed between the two renames of a save: the previous checkpoint is read
    os.rename(tmp_path / "c", tmp_path / ".c.old")
    assert ck.load(state)[1]["step"] == 4


def test_checkpoint_of_another_spec_is_a_user_error(tmp_path):
    """The identity is the spec but its budget: another seed is another run (one line)."""
    out = tmp_path / "run"
    ck = runner._RunCheckpointer(out, runner.complete_spec(SPEC), warn=print)
    ck.save({"x": np.zeros(2)}, {"step": 1})
    other = runner._RunCheckpointer(out, runner.complete_spec({**SPEC, "data_seed": 5,
                                                               "max_steps": 50}), warn=print)
    with pytest.raises(UserError, match=r"different run \(differs in \['data_seed'\]\)"):
        other.load({"x": np.zeros(2)})
    longer = runner._RunCheckpointer(out, runner.complete_spec({**SPEC, "max_steps": 50}),
                                     warn=print)
    assert longer.load({"x": np.zeros(2)})[1]["step"] == 1  # a longer budget resumes


def test_checkpoint_every_spec_values():
    assert runner.checkpoint_seconds(runner.complete_spec({**SPEC, "checkpoint_every": None,
                                                           "max_seconds": 60})) is None
    assert runner.checkpoint_seconds(runner.complete_spec(
        {**SPEC, "checkpoint_every": None, "max_seconds": 3600})) == \
        runner.CHECKPOINT_DEFAULT_SECONDS
    assert runner.checkpoint_seconds(runner.complete_spec(SPEC)) is None
    assert runner.checkpoint_seconds(runner.complete_spec(
        {**SPEC, "checkpoint_every": 2.5})) == 2.5
    for bad in (-1, float("nan"), float("inf"), "often", True):
        with pytest.raises(UserError, match="checkpoint_every must be"):
            runner.complete_spec({**SPEC, "checkpoint_every": bad})


def test_cli_signal_handler_first_asks_second_stops():
    from pinn_ng.cli import _StopOnSignal

    stop = _StopOnSignal()
    try:
        assert stop() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop() == "SIGTERM" and stop.exit_status == 128 + signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


@pytest.mark.slow  # a process of its own: import and compilation, ~10 s on 2 idle cores
def test_sigterm_to_a_real_process_saves_and_exits_nonzero(tmp_path):
    """``pinn-ng run`` sent SIGTERM mid-run: exit 143, no record, a checkpoint, one line."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pinn_ng.cli", "run", "--no-progress", "--problem",
           "poisson2d", "--optimizer", "adam", "--widths", "2,4,1", "--n-interior", "10",
           "--n-boundary", "4", "--max-steps", "100000000", "--eval-every", "1000000",
           "--checkpoint-every", "0.2", "--out", str(out)]
    log = tmp_path / "stderr"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint" / checkpoint.PROGRESS).is_file():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not records.is_complete(out)
    progress = json.loads((out / "checkpoint" / checkpoint.PROGRESS).read_text())
    assert progress["segments"][-1]["ended"] == "SIGTERM" and progress["step"] > 0
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0]


def test_plan_lists_the_runs_a_time_limit_stops(capsys):
    from pinn_ng.cli import main
    from pinn_ng.pipeline import config as pcfg

    assert main(["plan", "smoke", "--time-limit", "16"]) == 0
    err = capsys.readouterr().err.splitlines()
    plan = pcfg.plan(pcfg.merge(pcfg.load_preset(pcfg.preset_path("default")),
                                pcfg.load_preset(pcfg.preset_path("smoke"))))
    runs = {**plan.runs, **{r: t["spec"] for r, t in plan.tuned.items()}}
    over = sorted(r for r, s in runs.items() if pcfg.budget_minutes(s) > 16)
    head = [ln for ln in err if ln.startswith("time limit 16 min:")]
    assert head == [f"time limit 16 min: {len(over)} of {len(runs)} runs need longer (budget "
                    "x 1.5 + 15 min) and will be stopped by SIGTERM, checkpointed and resumed "
                    "by Snakemake's retries"]
    listed = sorted(ln.split(":")[0].strip() for ln in err if ln.startswith("  "))
    assert listed == over and over  # the smoke runs' 17-minute limits exceed 16
    assert main(["plan", "smoke", "--time-limit", "-5"]) == 2
    assert "--time-limit must be a positive number" in capsys.readouterr().err


@pytest.mark.slow  # three Snakemake dry runs; the key's bad values: test_bad_inputs.py
def test_preset_key_checkpoint_every_reaches_every_run_and_changes_no_run_id(tmp_path):
    """`checkpoint_every` in a preset becomes each run's `--checkpoint-every` (runs and tuned
    runs); run ids stay those of the preset without it, so finished records stay valid."""
    repo = Path(__file__).resolve().parents[1]

    def dry(*config):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d",
             str(tmp_path), "-n", "-p", "--cores", "1", "--configfile",
             str(repo / "config" / "smoke.yaml"), *(("--config", *config) if config else ())],
            capture_output=True, text=True, timeout=300)
        return proc, [ln for ln in (proc.stdout + proc.stderr).splitlines()
                      if "pinn-ng run " in ln or "pinn-ng tune final " in ln]

    proc, plain = dry()
    assert proc.returncode == 0 and plain, proc.stderr[-2000:]
    assert not any("--checkpoint-every" in ln for ln in plain)
    proc, every = dry("checkpoint_every=45")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(every) == len(plain) and all("--checkpoint-every 45 " in ln for ln in every)
    assert sorted(ln.replace("--checkpoint-every 45 ", "") for ln in every) == sorted(plain)
    proc, _ = dry("checkpoint_every=-1")
    assert proc.returncode != 0
    assert "checkpoint_every" in proc.stderr and "Traceback" not in proc.stderr
