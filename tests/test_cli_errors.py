"""The command line speaks in sentences (issue 9, part 5).

Every user error of ``pinn-ng run / gather / plan / figures`` (a bad flag, value, run
specification, preset or file) is one line on stderr that names the offending key or value,
exit status 2, no traceback, and no run record left behind.  Most cases call
``pinn_ng.cli.main`` in-process (fast); a few go through the installed ``pinn-ng`` entry point.
Sizes are tiny and float32, and every case fails before anything is compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pinn_ng import cli
from pinn_ng.pipeline import records, runner
from pinn_ng.pipeline.errors import UserError

PINN_NG = Path(sys.executable).parent / "pinn-ng"

#: A valid tiny run: every case below spoils one thing.
RUN = ["run", "--problem", "poisson2d", "--optimizer", "engd_woodbury", "--widths", "2,4,1",
       "--n-interior", "8", "--n-boundary", "4", "--max-steps", "1", "--dtype", "float32",
       "--no-progress", "--hparam", "damping=1e-6", "--out", "{out}"]
SPRING = [a if a != "engd_woodbury" else "spring" for a in RUN] + [
    "--hparam", "momentum=0.9"]


def run(*extra):
    return RUN + list(extra)


def without(flag, *extra):
    """RUN without one flag (and its value), e.g. to let --spec set it (flags win over --spec)."""
    i = RUN.index(flag)
    return RUN[:i] + RUN[i + 2:] + list(extra)


BAD_PRESET = "optimizers:\n  mine:\n    optimizer: adamw\n"

# id, argv ({out}, {tmp} filled in by str.format: braces doubled), files to write under tmp,
# texts the message must contain
CASES = [
    # ------------------------------------------------------------------ pinn-ng run: batch, net
    ("n_interior_zero", run("--n-interior", "0"), {}, ["n_interior", "0", "positive"]),
    ("n_interior_negative", run("--n-interior", "-5"), {}, ["n_interior", "-5"]),
    ("n_boundary_negative", run("--n-boundary", "-3"), {}, ["n_boundary", "-3", "positive"]),
    ("widths_not_ints", run("--widths", "5,a,1"), {}, ["--widths", "5,a,1", "integers"]),
    ("widths_wrong_input_dim", run("--widths", "3,4,1"), {},
     ["widths", "[3, 4, 1]", "input dimension 2"]),
    ("widths_zero", run("--widths", "2,0,1"), {}, ["widths", "positive"]),
    # ------------------------------------------------------------------ budget, evaluation, dtype
    ("eval_every_zero", run("--eval-every", "0"), {}, ["eval_every", "0", "positive"]),
    ("eval_every_negative", run("--eval-every", "-2"), {}, ["eval_every", "-2"]),
    ("max_steps_negative", run("--max-steps", "-1"), {}, ["max_steps", "-1", ">= 0"]),
    ("max_seconds_negative", run("--max-seconds", "-1"), {}, ["max_seconds", "-1", "positive"]),
    ("max_steps_not_int", run("--max-steps", "ten"), {}, ["--max-steps", "ten"]),
    ("dtype_unknown", run("--dtype", "float16"), {}, ["--dtype", "float16", "float64",
                                                      "float32"]),
    ("dtype_in_spec", without("--dtype", "--spec", '{{"dtype": "half"}}'), {},
     ["dtype", "half", "float64"]),
    # ------------------------------------------------------------------ names
    ("problem_unknown", run("--problem", "poisson7d"), {}, ["poisson7d", "poisson5d"]),
    ("optimizer_unknown", run("--optimizer", "adamw"), {}, ["adamw", "engd_woodbury",
                                                            "spring"]),
    ("kfac_missing_momentum", run("--optimizer", "kfac"), {}, ["kfac", "momentum"]),
    ("batch_every_zero", run("--batch-every", "0"), {}, ["batch_every", "0", "positive"]),
    # ------------------------------------------------------------------ hyper-parameters
    ("hparam_misspelt", SPRING + ["--hparam", "dampng=1e-7"], {}, ["dampng", "spring"]),
    ("hparam_without_equals", run("--hparam", "damping"), {}, ["--hparam", "damping",
                                                                "KEY=VALUE"]),
    ("hparam_unreadable", run("--hparam", "damping=[1,"), {}, ["--hparam damping", "[1,"]),
    ("damping_negative", run("--hparam", "damping=-1"), {}, ["damping", "-1", ">= 0"]),
    ("damping_not_a_number", run("--hparam", "damping=abc"), {}, ["damping", "abc"]),
    ("damping_nan", run("--hparam", "damping=nan"), {}, ["damping", "nan"]),
    ("momentum_above_one", SPRING + ["--hparam", "momentum=1.5"], {}, ["momentum", "1.5",
                                                                       "[0, 1)"]),
    ("solver_unknown", run("--hparam", "solver=qr"), {}, ["solver", "qr", "cholesky",
                                                          "nystrom"]),
    ("learning_rate_negative", run("--hparam", "learning_rate=-0.1"), {},
     ["learning_rate", "-0.1"]),
    ("learning_rate_word", run("--hparam", "learning_rate=fast"), {}, ["learning_rate", "fast",
                                                                       "line_search"]),
    ("sketch_larger_than_batch", run("--hparam", "solver=nystrom", "--hparam",
                                     "sketch_size=99999"), {},
     ["sketch_size", "99999", "N = n_interior + n_boundary = 12"]),
    ("sketch_fraction_above_one", run("--hparam", "solver=nystrom_gpu", "--hparam",
                                      "sketch_size=1.5"), {}, ["sketch_size", "1.5", "(0, 1]"]),
    # ------------------------------------------------------------------ --spec
    ("spec_bad_json", run("--spec", "{{bad"), {}, ["--spec", "not valid JSON"]),
    ("spec_missing_file", run("--spec", "@{tmp}/nope.json"), {}, ["nope.json", "no such file"]),
    ("spec_not_an_object", run("--spec", "[1, 2]"), {}, ["--spec", "JSON object", "list"]),
    ("spec_unknown_key", run("--spec", '{{"n_interor": 8}}'), {}, ["n_interor", "n_interior"]),
    ("spec_file_bad_hparams", without("--hparam", "--spec", "@{tmp}/spec.json"),
     {"spec.json": '{"hparams": {"damping": -3}}'}, ["damping", "-3"]),
    ("run_without_problem", ["run", "--optimizer", "adam", "--max-steps", "1", "--out",
                             "{out}"], {}, ["problem", "--problem"]),
    ("run_without_budget", ["run", "--problem", "poisson2d", "--optimizer", "adam", "--out",
                            "{out}"], {}, ["budget", "max_steps", "max_seconds"]),
    # ------------------------------------------------------------------ pinn-ng plan (presets)
    ("plan_no_such_preset", ["plan", "nope"], {}, ["'nope'", "smoke", "paper"]),
    ("plan_malformed_yaml", ["plan", "{tmp}/bad.yaml"], {"bad.yaml": "experiments: [a, b\n"},
     ["bad.yaml", "not valid YAML", "line"]),
    ("plan_yaml_not_a_mapping", ["plan", "{tmp}/list.yaml"], {"list.yaml": "- 1\n- 2\n"},
     ["list.yaml", "mapping"]),
    ("plan_unknown_top_level_key", ["plan", "smoke", "--config", "colour=red"], {},
     ["colour", "allowed keys", "dtype"]),
    ("plan_unknown_optimizer", ["plan", "smoke", "{tmp}/opt.yaml"], {"opt.yaml": BAD_PRESET},
     ["optimizers.mine.optimizer", "adamw", "engd_woodbury"]),
    ("plan_config_without_equals", ["plan", "smoke", "--config", "dtype"], {},
     ["--config", "'dtype'", "KEY=VALUE"]),
    ("plan_bad_dtype", ["plan", "smoke", "--config", "dtype=float16"], {},
     ["dtype", "float16", "float64"]),
    ("plan_bad_experiment_name", ["plan", "smoke", "{tmp}/exp.yaml"],
     {"exp.yaml": "experiments:\n  convergenze: null\n"}, ["convergenze", "convergence"]),
    # ------------------------------------------------------------------ gather, figures
    ("gather_corrupt_meta_strict", ["gather", "--strict", "--runs-dir", "{tmp}/runs",
                                    "--out-dir", "{out}"], {"runs/r1/meta.json": "{not json",
                                                            "runs/r1/curve.csv": "step\n0\n"},
     ["runs/r1/meta.json", "not valid JSON"]),
    ("gather_no_runs_dir", ["gather", "--runs-dir", "{tmp}/none", "--out-dir", "{out}"], {},
     ["none"]),
    ("gather_bad_manifest", ["gather", "--runs-dir", "{tmp}", "--manifest", "{tmp}/m.json",
                             "--out-dir", "{out}"], {"m.json": "[1]"}, ["m.json", "object"]),
    ("figures_unknown_figure", ["figures", "--results", "{tmp}/none", "--figure", "speedup"],
     {}, ["none"]),
    ("unknown_subcommand", ["nystrom-tabel"], {}, ["nystrom-tabel", "run", "gather"]),
    # ------------------------------------------------------------------ pinn-ng tune (issue 12)
    ("plan_space_lo_above_hi", ["plan", "smoke", "{tmp}/t.yaml"],
     {"t.yaml": "tuning:\n  spaces:\n    adam:\n      space: {learning_rate: "
                "{loguniform: [0.5, 1.0e-4]}}\n"},
     ["tuning.spaces.adam.space.learning_rate.loguniform", "lo must be below hi"]),
    ("plan_space_unknown_label", ["plan", "smoke", "{tmp}/t.yaml"],
     {"t.yaml": "tuning:\n  spaces:\n    adamm:\n      space: {learning_rate: "
                "{uniform: [0.1, 1.0]}}\n"}, ["tuning.spaces.adamm", "adam", "engd_w"]),
    ("plan_study_unknown_optimizer", ["plan", "smoke", "{tmp}/t.yaml"],
     {"t.yaml": "tuning:\n  studies:\n    tunesmoke: {optimizers: [kfak]}\n"},
     ["tuning.studies.tunesmoke.optimizers[0]", "kfak"]),
    ("tune_trials_no_study", ["tune", "trials", "--study", "{tmp}/none.json", "--stage", "1",
                              "--out", "{out}"], {}, ["none.json", "study"]),
    ("tune_trial_unknown", ["tune", "trial", "--trials", "{tmp}/t.csv", "--trial", "x",
                            "--out", "{out}"], {"t.csv": "trial_id,problem\n"}, ["t.csv"]),
    ("tune_final_bad_search", ["tune", "final", "--best", "{tmp}/b.json", "--search", "p",
                               "--spec", "{{}}", "--out", "{out}"], {"b.json": "{}"},
     ["--search", "PROBLEM:LABEL:N"]),
    ("tune_figure_unknown", ["tune", "figure", "--best", "{tmp}/b.json", "--results",
                             "{tmp}/r.csv", "--figure", "scatter_x", "--out", "{out}"], {},
     ["scatter_x", "sensitivity_<study>"]),
]


def _fill(argv, tmp_path):
    return [a.format(out=tmp_path / "out", tmp=tmp_path) for a in argv]


def _write(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _assert_one_clear_line(rc, err, expected, tmp_path):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pinn-ng"), err
    for text in expected:
        assert text.format(tmp=tmp_path) in lines[0], (text, lines[0])
    out = tmp_path / "out"  # no record, and no table, left behind
    for name in (records.META, records.CURVE, "summary.csv", "curves.csv"):
        assert not (out / name).exists(), name


def test_at_least_25_cases():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,files,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2_and_no_record(argv, files, expected, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.delenv("PINN_NG_TRACEBACK", raising=False)
    _write(tmp_path, files)
    rc = cli.main(_fill(argv, tmp_path))
    _assert_one_clear_line(rc, capsys.readouterr().err, expected, tmp_path)


# ---------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize("name", ["n_interior_zero", "hparam_misspelt",
                                  "gather_corrupt_meta_strict"])
def test_entry_point_says_it_in_one_line(name, tmp_path):
    argv, files, expected = next(c[1:] for c in CASES if c[0] == name)
    _write(tmp_path, files)
    env = {k: v for k, v in os.environ.items() if k != "PINN_NG_TRACEBACK"}
    proc = subprocess.run([str(PINN_NG), *_fill(argv, tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    _assert_one_clear_line(proc.returncode, proc.stderr, expected, tmp_path)


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    argv = ["--debug", *_fill(run("--n-interior", "0"), tmp_path)]
    with pytest.raises(runner.SpecError, match="n_interior"):
        cli.main(argv)
    monkeypatch.setenv("PINN_NG_TRACEBACK", "1")
    with pytest.raises(UserError, match="dampng"):
        cli.main(_fill(SPRING + ["--hparam", "dampng=1e-7"], tmp_path))
    assert not (tmp_path / "out").exists()
    env = {**os.environ, "PINN_NG_TRACEBACK": "1"}
    proc = subprocess.run([str(PINN_NG), "plan", "nope"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(spec, out_dir, **options):  # progress, on_contention, …
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(runner, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(_fill(run(), tmp_path))


# ---------------------------------------------------------------------- gather over a bad record


def _good_record(run_dir):
    spec = {"problem": "poisson2d", "label": "adam", "display": "Adam", "optimizer": "adam",
            "hparams": {}, "widths": [2, 4, 1], "n_interior": 8, "n_boundary": 4,
            "replicate": 0, "data_seed": 0, "model_seed": 1, "max_steps": 2,
            "max_seconds": None, "eval_every": 1, "dtype": "float32"}
    rows = [{"step": s, "time": 0.1 * s, "loss": 1.0, "l2": 0.5, "rms_l2": 0.5, "rel_l2": 0.5,
             "step_size": 1.0} for s in range(3)]
    meta = {"spec": spec, "N": 12, "n_params": 17, "steps": 2, "seconds": 0.2,
            "seconds_per_step": 0.1, "compile_seconds": 1.0, "diverged": False,
            "reason": None, "stopped_by": "max_steps", "final": {"l2": 0.5, "rel_l2": 0.5},
            "best_l2": 0.5}
    records.write_record(run_dir, rows, list(rows[0]), meta)


@pytest.mark.parametrize("damage", ["{not json", "[]", json.dumps({"spec": {}})])
def test_gather_skips_a_damaged_record_with_a_warning_naming_it(damage, tmp_path, capsys):
    runs = tmp_path / "runs"
    _good_record(runs / "good")
    _good_record(runs / "bad")
    (runs / "bad" / records.META).write_text(damage)
    assert cli.main(["gather", "--runs-dir", str(runs), "--out-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and str(runs / "bad" / "meta.json") in err[0]
    summary = (tmp_path / "summary.csv").read_text()
    assert "good" in summary and "\nbad," not in summary
    assert cli.main(["gather", "--strict", "--runs-dir", str(runs), "--out-dir",
                     str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strict" in err[0] and str(runs / "bad" / "meta.json") in err[0]
    assert not (tmp_path / "strict").exists()


def test_snakemake_with_a_bad_preset_says_it_in_one_line(tmp_path):
    """The Snakefile validates the preset when it is parsed: one line, exit 2, nothing run."""
    (tmp_path / "bad.yaml").write_text(BAD_PRESET)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
                           "-d", str(tmp_path), "-n", "--cores", "1", "--configfile",
                           str(tmp_path / "bad.yaml")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pinn-ng preset")]
    assert len(ours) == 1 and "optimizers.mine.optimizer" in ours[0] and "adamw" in ours[0]
    assert "engd_woodbury" in ours[0]
    assert not (tmp_path / "results").exists()
