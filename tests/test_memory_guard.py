"""The memory guard (pinn_ng.memory): XLA's estimate of the compiled step against what the
device has available, one line when it cannot fit, ``--no-memory-check`` to run anyway."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pinn_ng import memory
from pinn_ng.cli import main
from pinn_ng.pipeline import records, runner
from pinn_ng.pipeline.errors import UserError

SPEC = {"problem": "poisson2d", "optimizer": "engd_woodbury",
        "hparams": {"damping": 1e-8, "learning_rate": "line_search"},
        "widths": [2, 6, 1], "n_interior": 20, "n_boundary": 6, "max_steps": 2,
        "eval_every": 1}


def test_estimate_counts_arguments_outputs_and_temporaries():
    n = 300
    x = jax.ShapeDtypeStruct((n, n), jnp.float64)
    compiled = jax.jit(lambda a: (a @ a.T).sum(axis=0)).lower(x).compile()
    est = memory.estimate(compiled)
    assert est["argument_bytes"] == n * n * 8 and est["output_bytes"] == n * 8
    assert est["temp_bytes"] >= 0  # XLA may fuse the product away or keep it
    assert est["total_bytes"] == (est["argument_bytes"] + est["output_bytes"]
                                  - est["alias_bytes"] + est["temp_bytes"])


def test_check_raises_one_line_with_estimate_available_and_hint():
    compiled = jax.jit(lambda a: a * 2).lower(jax.ShapeDtypeStruct((1000,), jnp.float64)
                                              ).compile()
    with pytest.raises(memory.MemoryGuardError) as info:
        memory.check(compiled, available_bytes=100, hint="a smaller N")
    msg = str(info.value)
    assert "\n" not in msg and "GiB" in msg and "a smaller N" in msg
    ok = memory.check(compiled, available_bytes=10**12)
    assert ok["checked"] and ok["total_bytes"] == 16000 and ok["available_source"] == "given"
    off = memory.check(compiled, enabled=False, available_bytes=100)
    assert not off["checked"] and off["total_bytes"] == 16000


def test_available_on_cpu_reads_meminfo(tmp_path, monkeypatch):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  1000 kB\nMemAvailable:   2048 kB\n")
    assert memory._meminfo_available(fake) == 2048 * 1024
    assert memory._meminfo_available(tmp_path / "absent") is None
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 5 * 1024**3)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 3 * 1024**3)
    assert memory.available() == (3 * 1024**3, "cgroup memory limit")


@pytest.fixture
def tiny_machine(monkeypatch):
    """A machine with 1 KiB available: every step is too large."""
    monkeypatch.setattr(memory, "available", lambda device=None: (1024, "MemAvailable"))


def test_run_that_cannot_fit_stops_before_the_first_step(tiny_machine, tmp_path):
    with pytest.raises(UserError) as info:
        runner.run(SPEC, tmp_path / "run", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "only 0.00 GiB are available (MemAvailable)" in msg
    assert "kernel=blocked" in msg and "solver=nystrom" in msg and "--n-interior" in msg
    assert not records.is_complete(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_no_memory_check_runs_and_records_the_estimate(tiny_machine, tmp_path):
    meta = runner.run(SPEC, tmp_path / "run", progress=False, memory_check=False)
    assert meta["status"] == "finished"
    mem = meta["memory"]
    assert not mem["checked"] and mem["available_bytes"] == 1024
    assert mem["total_bytes"] > mem["argument_bytes"] > 0


def test_cli_memory_guard_is_one_line_exit_2(tiny_machine, tmp_path, capsys):
    args = ["run", "--problem", "poisson2d", "--optimizer", "adam", "--widths", "2,4,1",
            "--n-interior", "8", "--n-boundary", "4", "--max-steps", "1",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pinn-ng run: error: the compiled training "
                                               "step needs about")
    # adam has neither a kernel nor a solver to change: only N is suggested
    assert "kernel" not in err[0] and "smaller N" in err[0]


def test_plan_estimate_from_shapes_matches_the_run(tmp_path):
    """``pinn-ng plan --memory`` compiles from ShapeDtypeStructs; a run measures the same."""
    meta = runner.run(SPEC, tmp_path / "run", progress=False)
    est = runner.estimate_memory(SPEC)
    assert {k: meta["memory"][k] for k in est} == est
    assert runner.shape_key({**runner.complete_spec(SPEC), "data_seed": 3}) == \
        runner.shape_key(runner.complete_spec(SPEC))


def test_share_device_sets_a_fraction_unless_the_user_did():
    env = {}
    assert memory.share_device(3, env) == 0.3 and env == {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}
    assert memory.share_device(1, {}) is None
    mine = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert memory.share_device(4, mine) is None and len(mine) == 1


def test_lower_bound_counts_the_arrays_the_step_must_hold():
    base = {"problem": "poisson2d", "widths": [2, 8, 1], "n_interior": 30, "n_boundary": 10,
            "max_steps": 1}
    n, p = 40, 8 * 2 + 8 + 8 + 1
    need, what = runner.lower_bound_bytes(dict(base, optimizer="engd_woodbury",
                                               hparams={"damping": 1e-8}))
    assert need == (n * p + n * n) * 8 and "K (40 x 40)" in what
    need, _ = runner.lower_bound_bytes(dict(base, optimizer="spring", dtype="float32", hparams={
        "damping": 1e-8, "momentum": 0.3, "solver": "nystrom", "sketch_size": 4}))
    assert need == n * p * 4
    need, what = runner.lower_bound_bytes(dict(base, optimizer="engd", hparams={"damping": 1e-8}))
    assert need == (n * p + p * p) * 8 and "Gramian" in what
    assert runner.lower_bound_bytes(dict(base, optimizer="adam",
                                         hparams={"learning_rate": 1e-3}))[0] == 0


def test_a_batch_far_too_large_stops_before_compiling(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available", lambda device=None: (10 * 1024**3, "MemAvailable"))
    compiled = []
    monkeypatch.setattr(runner, "estimate_memory", lambda spec: compiled.append(spec))
    spec = {"problem": "poisson5d", "optimizer": "engd_woodbury", "n_interior": 1_000_000,
            "hparams": {"damping": 3.17e-12, "learning_rate": "line_search"}, "max_steps": 1}
    with pytest.raises(UserError) as info:
        runner.run(spec, tmp_path / "run", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "needs at least 7,533.1 GiB" in msg and "K (1,000,500" in msg
    assert not compiled and not records.is_complete(tmp_path / "run")
