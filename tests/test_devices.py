"""Issue 13, part 3: the GPU guard, ``pinn-ng plan``'s GPU-hours, the SLURM profile's settings.

The guard is tested both ways: on this machine's real ``jax.devices()`` (which must refuse
``gpu`` where there is no GPU and accept it where there is one), and against a stand-in GPU
device list, so that acceptance is tested on a CPU-only machine too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from pinn_ng import cli
from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import devices
from pinn_ng.pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HAS_GPU = any(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
RUN = ["run", "--problem", "poisson2d", "--optimizer", "adam", "--widths", "2,4,1",
       "--n-interior", "8", "--n-boundary", "4", "--max-steps", "1", "--dtype", "float32",
       "--no-progress"]
ENV = {**{k: v for k, v in os.environ.items() if k != "PINN_NG_TRACEBACK"},
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


class _FakeDevice:
    def __init__(self, platform, kind):
        self.platform, self.device_kind = platform, kind

    def __repr__(self):
        return f"{self.platform}:{self.device_kind}"


def test_gpu_guard_on_this_machine():
    if HAS_GPU:
        assert devices.require("gpu") in ("gpu", "cuda", "rocm")
    else:
        with pytest.raises(UserError, match=r"device=gpu, but JAX sees no GPU \(jax.devices"
                                            r"\(\): \[.*CpuDevice"):
            devices.require("gpu")
    assert devices.require("any") == jax.devices()[0].platform


def test_gpu_guard_accepts_a_gpu_and_cpu_guard_refuses_it(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda: [_FakeDevice("gpu", "NVIDIA H100")])
    assert devices.require("gpu") == "gpu"
    with pytest.raises(UserError, match="device=cpu, but JAX's default device is"):
        devices.require("cpu")
    monkeypatch.setattr(jax, "devices", lambda: [_FakeDevice("cpu", "cpu")])
    with pytest.raises(UserError, match="no GPU"):
        devices.require("gpu")
    with pytest.raises(UserError, match=r"device 'tpu' is not one of \['any', 'cpu', 'gpu'\]"):
        devices.require("tpu")


@pytest.mark.skipif(HAS_GPU, reason="the refusal needs a machine without a GPU")
def test_pinn_ng_run_device_gpu_refuses_in_one_line_without_a_record(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(Path(sys.executable).parent / "pinn-ng"), *RUN, "--device",
                           "gpu", "--out", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("pinn-ng run: error: device=gpu, but JAX sees no GPU")
    assert "device=any" in lines[0]
    assert not out.exists()


@pytest.mark.skipif(HAS_GPU, reason="the refusal needs a machine without a GPU")
def test_snakemake_device_gpu_refuses_before_any_job(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--cores", "1", "--configfile", str(REPO / "config" / "smoke.yaml"), "--config",
         "device=gpu"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    ours = [x for x in proc.stderr.splitlines() if x.startswith("pinn-ng preset: error:")]
    assert len(ours) == 1 and "device=gpu, but JAX sees no GPU" in ours[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "runs").exists()
    # a dry run (and `pinn-ng plan`) never checks: a login node has no GPU
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "-n", "--cores", "1", "--configfile", str(REPO / "config" / "smoke.yaml"), "--config",
         "device=gpu"], capture_output=True, text=True, env=ENV, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]


def test_paper_preset_asks_for_a_gpu_and_the_default_for_any():
    assert pcfg.load_yaml(REPO / "config" / "paper.yaml")["device"] == "gpu"
    assert pcfg.load_yaml(REPO / "config" / "default.yaml")["device"] == "any"
    cfg = pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"), {"device": "tpu"})
    with pytest.raises(pcfg.ConfigError, match="device"):
        pcfg.plan(cfg, check_optimizers=False)


def test_plan_gpu_hours_of_the_paper_preset(capsys):
    cfg = pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"),
                     pcfg.load_yaml(REPO / "config" / "paper.yaml"))
    plan = pcfg.plan(cfg, check_optimizers=False)
    est = pcfg.device_hours(plan)
    # by hand: every paper run has a budget in seconds
    seconds = [s["max_seconds"] for s in plan.runs.values()]
    assert None not in seconds and est.steps_only == 0
    assert est.budget_hours == pytest.approx(sum(seconds) / 3600)
    assert est.limit_hours == pytest.approx(
        sum(int(-(-s * 1.5 // 60)) + 15 for s in seconds) / 60)
    assert est.limit_hours > est.budget_hours > 24  # "several GPU-days"
    assert cli.main(["plan", "paper"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"GPU-hours: about {est.budget_hours:.1f} h of training")
    assert f"at most {est.limit_hours:.1f} h" in err[-1]
    # two GPUs per run: twice the GPU-hours
    cfg2 = pcfg.merge(cfg, {"gpus_per_run": 2})
    est2 = pcfg.device_hours(pcfg.plan(cfg2, check_optimizers=False))
    assert est2.budget_hours == pytest.approx(2 * est.budget_hours)


def test_plan_counts_step_only_runs_at_their_limit():
    cfg = pcfg.merge(pcfg.load_yaml(REPO / "config" / "default.yaml"),
                     pcfg.load_yaml(REPO / "config" / "smoke.yaml"))
    for exp in cfg["experiments"].values():
        if exp:
            exp["budget"] = {"steps": 6, "seconds": None}
    plan = pcfg.plan(cfg, check_optimizers=False)
    est = pcfg.device_hours(plan)
    assert est.steps_only == len(plan.runs) and est.budget_hours == 0
    assert est.limit_hours == pytest.approx(len(plan.runs))  # 60 min each
    assert "device-hours (gpus_per_run: 0)" in est.describe()
    assert f"{len(plan.runs)} runs have a step budget only" in est.describe()


# ------------------------------------------------------------------ the SLURM profile's settings

RULES = ["run", "gather", "nystrom_table"]


def test_profile_placeholders_are_refused_with_one_line():
    profile = pcfg.load_yaml(REPO / "profiles" / "slurm" / "config.yaml")
    err = pcfg.slurm_settings_error(profile["default-resources"], profile["set-resources"],
                                    RULES)
    assert err is not None and "\n" not in err
    assert err.startswith("slurm_account for rule run is still the placeholder '<your account>'")
    assert "profiles/slurm/config.yaml" in err and "--slurm-no-account" in err


def test_profile_settings_filled_in_pass():
    default = {"slurm_account": "proj42", "slurm_partition": "cpu", "mem_mb": 8000}
    per_rule = {"run": {"slurm_partition": "gpu", "gpu": 1}}
    assert pcfg.slurm_settings_error(default, per_rule, RULES) is None
    # a GPU rule still carrying its placeholder is named
    per_rule["nystrom_table"] = {"slurm_partition": "<your GPU partition>"}
    err = pcfg.slurm_settings_error(default, per_rule, RULES)
    assert err.startswith("slurm_partition for rule nystrom_table is still the placeholder")
    assert "set-resources" in err
    # unset account: named unless --slurm-no-account
    del default["slurm_account"]
    per_rule.pop("nystrom_table")
    assert pcfg.slurm_settings_error(default, per_rule, RULES).startswith(
        "slurm_account for rule run is unset")
    assert pcfg.slurm_settings_error(default, per_rule, RULES, no_account=True) is None
