"""Bad inputs, systematically: a table generated from the parser, the registries and the schema.

Every flag of ``pinn-ng run`` (from :func:`pinn_ng.cli.build_parser`), every hyper-parameter of
every optimizer (:func:`pinn_ng.optim.hyperparameters`), every key of a preset (walked from the
schema over a small preset) and every file the suite reads gets the same bad values: a wrong
type, NaN, +-inf, zero, a negative number, a huge number and an empty value; a file is missing,
unreadable (bytes that are no text), truncated or a folder.  Each case must either stop with
one line naming what is wrong (exit status != 0, no traceback) or be accepted; the accepted
run flags and hyper-parameters are then run for real (one step on a tiny net, ``slow``) and
must leave a record saying what happened.  A new flag, hyper-parameter or key is covered
without anyone adding it here.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinn_ng import cli, optim
from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import runner

#: The bad values, as a user would type them on a command line.
TEXT_VALUES = {"wrong type": "abc", "nan": "nan", "inf": "inf", "-inf": "-inf", "zero": "0",
               "negative": "-1", "huge": "1e300", "huge int": "100000000000000000000",
               "empty": ""}
#: The same as data (JSON, YAML, keyword arguments).
DATA_VALUES = {"wrong type": "abc", "nan": float("nan"), "inf": float("inf"),
               "-inf": float("-inf"), "zero": 0, "negative": -1, "huge": 1e300,
               "huge int": 10**20, "empty": None, "empty list": [], "wrong type list": {}}
#: A valid base run: tiny, one step.
BASE_RUN = ["--problem", "poisson2d", "--optimizer", "adam", "--hparam", "learning_rate=1e-3",
            "--widths", "2,4,1", "--n-interior", "4", "--n-boundary", "4", "--max-steps", "1",
            "--eval-every", "1", "--no-progress"]
#: A small valid preset whose keys the schema walk mutates.
BASE_PRESET = {
    "dtype": "float64", "eval_every": 1, "data_seed": 0, "model_seed": 1, "replicates": 1,
    "budget_scale": 1.0, "run_threads": 0, "gpus_per_run": 0, "device": "any",
    "on_contention": "mark", "compilation_cache": None, "results_dir": "results",
    "figures_dir": "figures", "figure_dpi": 100,
    "problems": {"poisson2d": {"widths": [2, 4, 1], "batch": [4, 4]}},
    "optimizers": {"adam": {"optimizer": "adam", "display": "Adam",
                            "hparams": {"learning_rate": 1e-3}}},
    "experiments": {"convergence": {"problems": ["poisson2d"], "optimizers": ["adam"],
                                    "budget": {"steps": 1, "seconds": None},
                                    "replicates": 1, "eval_every": 1, "tuned": ["s"]}},
    "tuning": {"search_seed": 0, "trial_threads": 0,
               "spaces": {"adam": {"space": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}}},
               "studies": {"s": {"problems": ["poisson2d"], "optimizers": ["adam"],
                                 "trials": [2], "budget": {"steps": 1}}}},
}


class _Accepted(Exception):
    """Raised instead of training: the value passed every check before a run starts."""


def _call(argv, monkeypatch=None, train=False):
    """``pinn-ng argv`` in this process: (exit status, stderr, what happened)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except _Accepted as acc:
        return 0, err.getvalue(), ("accepted", acc.args[0])
    except Exception as exc:  # noqa: BLE001 - a bug: the table reports it
        return None, err.getvalue(), ("crash", f"{type(exc).__name__}: {exc}")
    return code, err.getvalue(), ("exit", code)


def _one_line_error(code, stderr) -> bool:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return code not in (0, None) and len(lines) >= 1 and "Traceback" not in stderr and \
        lines[-1].startswith("pinn-ng") and "error" in lines[-1]


@pytest.fixture
def no_training(monkeypatch):
    """``pinn-ng run`` up to the point where training would start (optimizer built)."""
    from pinn_ng import plugins

    plugins.load()  # once: entry points are not what this table is about
    monkeypatch.setattr(plugins, "load", lambda *a, **k: None)

    def fake_run(spec, out_dir, **kw):
        raise _Accepted(_validate_run(spec))

    monkeypatch.setattr(runner, "run", fake_run)


def _validate_run(spec: dict) -> dict:
    """What ``pinn-ng run`` checks before its first step: the spec, then the optimizer built
    with its hyper-parameters (a :class:`~pinn_ng.pipeline.errors.UserError` is one line)."""
    from pinn_ng import models, problems
    from pinn_ng.residuals import ResidualFn

    spec = runner.complete_spec(spec)
    init, apply = models.make(spec.get("network", "mlp"), spec["widths"])
    runner.make_optimizer(spec, ResidualFn(problems.get(spec["problem"]), apply))
    return spec


def _outcome(spec: dict):
    """("rejected", one line) | ("accepted", spec) | ("crash", what): the run's checks."""
    from pinn_ng.pipeline.errors import UserError

    try:
        return "accepted", _validate_run(spec)
    except UserError as err:
        return "rejected", cli._one_line(err)
    except Exception as exc:  # noqa: BLE001 - a bug: the table reports it
        return "crash", f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------- the table


def run_flags():
    """(flag, action) of every option of ``pinn-ng run`` that takes a value."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["run"]
    return [(a.option_strings[-1], a) for a in sub._actions
            if a.option_strings and a.nargs != 0 and a.dest not in ("help",)]


def flag_cases():
    out = []
    for flag, action in run_flags():
        if flag in ("--out",):
            continue  # the record directory: the file cases below
        for name, text in TEXT_VALUES.items():
            if flag == "--widths":
                text = {"huge": "2,1e300,1", "huge int": "2,100000000000000000000,1",
                        "zero": "2,0,1", "negative": "2,-1,1"}.get(name, text)
            elif flag == "--hparam":
                text = f"learning_rate={text}"
            out.append(pytest.param(flag, text, id=f"{flag}={name}"))
    return out


def spec_cases():
    """Every key of a run specification (``--spec`` JSON) with every bad value."""
    return [pytest.param(key, value, id=f"spec.{key}={name}")
            for key in runner.SPEC_DEFAULTS for name, value in DATA_VALUES.items()]


def hparam_cases():
    out = []
    for opt in optim.names():
        for hp in optim.hyperparameters(opt):
            for name, value in DATA_VALUES.items():
                out.append(pytest.param(opt, hp, value, id=f"{opt}.{hp}={name}"))
    return out


def _resolve(schema, node):
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _schema_paths(schema, node, value, path=()):
    """Paths of every key the schema defines under the mappings present in ``value``."""
    node = _resolve(schema, node)
    if not isinstance(node, dict) or not isinstance(value, dict):
        return []
    alts = [node] + [_resolve(schema, a) for a in [*node.get("oneOf", ()), *node.get("anyOf", ())]]
    out = []
    for alt in alts:
        for key, sub in (alt.get("properties") or {}).items():
            out.append(path + (key,))
            out += _schema_paths(schema, sub, value.get(key), path + (key,))
        extra = alt.get("additionalProperties")
        if isinstance(extra, dict):
            for key, val in value.items():
                if key not in (alt.get("properties") or {}):
                    out += _schema_paths(schema, extra, val, path + (key,))
    return list(dict.fromkeys(out))


def preset_paths():
    schema = pcfg.load_schema()
    return _schema_paths(schema, schema, BASE_PRESET)


def preset_cases():
    return [pytest.param(path, value, id=f"{'.'.join(path)}={name}")
            for path in preset_paths() for name, value in DATA_VALUES.items()]


def _set(cfg, path, value):
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    node[path[-1]] = value


# ------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("flag, text", flag_cases())
def test_run_flag(flag, text, tmp_path, no_training):
    argv = ["run", *BASE_RUN, flag, text, "--out", str(tmp_path / "r")]
    code, stderr, (what, detail) = _call(argv)
    assert what != "crash", detail
    if what == "exit":
        assert _one_line_error(code, stderr), stderr
    assert not (tmp_path / "r" / "meta.json").exists() or what == "accepted"


TINY = {"problem": "poisson2d", "optimizer": "adam", "widths": [2, 4, 1], "n_interior": 4,
        "n_boundary": 4, "max_steps": 1, "eval_every": 1, "hparams": {"learning_rate": 1e-3}}


@pytest.mark.parametrize("key, value", spec_cases())
def test_spec_key(key, value):
    what, detail = _outcome({**TINY, key: value})
    assert what != "crash", detail
    if what == "rejected":
        assert key in detail or "spec" in detail or "a run needs" in detail, detail


@pytest.mark.parametrize("opt, hp, value", hparam_cases())
def test_hyperparameter(opt, hp, value):
    what, detail = _outcome({**TINY, "optimizer": opt,
                             "hparams": _required(opt) | {hp: value}})
    assert what != "crash", detail
    if what == "rejected":
        assert hp in detail or opt in detail, detail


def _required(opt) -> dict:
    """Values for the hyper-parameters an optimizer cannot do without."""
    defaults = {"damping": 1e-6, "momentum": 0.5, "learning_rate": 1e-3}
    return {k: defaults[k] for k, v in optim.hyperparameters(opt).items()
            if v is inspect.Parameter.empty and k in defaults}


@pytest.fixture(scope="module")
def fast_plan():
    """``plan`` with the schema read once and the entry points scanned once: what the table
    varies is the preset, not the files around it."""
    import importlib

    from pinn_ng import plugins

    plugins.load()
    mp = pytest.MonkeyPatch()
    where = importlib.import_module(pcfg.plan.__module__)
    schema = pcfg.load_schema()
    mp.setattr(where, "load_schema", lambda path=None: copy.deepcopy(schema))
    mp.setattr(plugins, "load", lambda *a, **k: None)
    yield pcfg.plan
    mp.undo()


@pytest.mark.parametrize("path, value", preset_cases())
def test_preset_key(path, value, fast_plan):
    cfg = copy.deepcopy(BASE_PRESET)
    _set(cfg, path, value)
    try:
        fast_plan(cfg)
    except pcfg.ConfigError as err:  # pinn-ng plan / the Snakefile print it as one line
        assert "config key" in str(err) or "preset" in str(err), str(err)
    # accepted: a valid preset after all (e.g. a null that means the default)


# --------------------------------------------------------------------------- files

#: How a file goes bad.
FILE_FAULTS = ("missing", "unreadable", "truncated", "folder")


def _spoil(path: Path, fault: str, good: str) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fault == "unreadable":  # bytes that are no text (root reads any mode bits)
        path.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    elif fault == "truncated":
        path.write_text(good[: len(good) // 2])
    elif fault == "folder":
        path.mkdir()


def _good_record(run_dir: Path) -> None:
    from pinn_ng.pipeline import records

    spec = runner.complete_spec(dict(TINY))
    rows = [{"step": 0, "time": 0.0, "loss": 1.0, "l2": 1.0, "rms_l2": 1.0, "rel_l2": 1.0,
             "step_size": 1.0}]
    meta = {"run_id": run_dir.name, "spec": spec, "N": 8, "n_params": 17, "steps": 1,
            "columns": list(rows[0]),
            "seconds": 0.1, "seconds_per_step": 0.1, "compile_seconds": 1.0,
            "diverged": False, "reason": None, "stopped_by": "max_steps", "status": "finished",
            "final": {"l2": 1.0, "rms_l2": 1.0, "rel_l2": 1.0}, "best_l2": 1.0}
    records.write_record(run_dir, rows, list(rows[0]), meta)


def _file_inputs(tmp: Path):
    """(name, the file, its good text, pinn-ng argv that reads it) for every input file."""
    import yaml

    from pinn_ng.pipeline import tuning

    spec = tmp / "spec.json"
    spec.write_text(json.dumps(TINY))
    preset = tmp / "preset.yaml"
    preset.write_text(yaml.safe_dump(BASE_PRESET))
    _good_record(tmp / "runs" / "r0")
    plan = pcfg.plan(copy.deepcopy(BASE_PRESET))
    study = tmp / "study.json"
    study.write_text(json.dumps(plan.studies["s"].to_json()))
    trials = tmp / "trials.csv"
    tuning.write_trials(study, 1, trials)
    trial_id = tuning.read_trials(trials)[0]["trial_id"]
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps(plan.manifest()))
    paper = tmp / "paper"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "reference" / "paper",
                    paper)
    out = str(tmp / "out")
    return [
        ("spec JSON", spec, ["run", "--spec", f"@{spec}", "--out", out]),
        ("preset YAML", preset, ["plan", str(preset)]),
        ("meta.json", tmp / "runs" / "r0" / "meta.json",
         ["gather", "--strict", "--runs-dir", str(tmp / "runs"), "--out-dir", out]),
        ("curve.csv", tmp / "runs" / "r0" / "curve.csv",
         ["gather", "--strict", "--runs-dir", str(tmp / "runs"), "--out-dir", out]),
        ("manifest", manifest, ["gather", "--manifest", str(manifest), "--runs-dir",
                                str(tmp / "runs"), "--out-dir", out]),
        ("study.json", study, ["tune", "trials", "--study", str(study), "--stage", "1",
                               "--out", str(tmp / "t.csv")]),
        ("trials.csv", trials, ["tune", "trial", "--trials", str(trials), "--trial", trial_id,
                                "--out", out]),
        ("paper runs.csv", paper / "runs.csv",
         ["compare", "--results", str(tmp / "results"), "--paper-dir", str(paper),
          "--out", str(tmp / "cmp" / "c.md")]),
    ]


FILE_NAMES = ("spec JSON", "preset YAML", "meta.json", "curve.csv", "manifest", "study.json",
              "trials.csv", "paper runs.csv")


@pytest.mark.parametrize("fault", FILE_FAULTS)
@pytest.mark.parametrize("name", FILE_NAMES)
def test_input_file(name, fault, tmp_path, no_training):
    if name == "paper runs.csv":  # the figures read the tables first: gather some
        _good_record(tmp_path / "runs0" / "r0")
        cli.main(["gather", "--runs-dir", str(tmp_path / "runs0"), "--out-dir",
                  str(tmp_path / "results")])
    inputs = {n: (f, argv) for n, f, argv in _file_inputs(tmp_path)}
    path, argv = inputs[name]
    good = path.read_text() if path.is_file() else ""
    _spoil(path, fault, good)
    code, stderr, (what, detail) = _call(argv)
    assert what != "crash", detail
    if what == "exit" and code != 0:
        assert _one_line_error(code, stderr), stderr
    else:  # read anyway: a table cut after a whole row still parses (what is there is read)
        assert what == "exit" and code == 0 and fault == "truncated", (what, stderr)


# ------------------------------------------------------------ accepted values, for real


def accepted_cases():
    """The spec and hyper-parameter cases that pass every check: they must run."""
    out = []
    for p in spec_cases():
        key, value = p.values
        if _outcome({**TINY, key: value})[0] == "accepted":
            out.append(pytest.param({**TINY, key: value}, id=p.id))
    for p in hparam_cases():
        opt, hp, value = p.values
        spec = {**TINY, "optimizer": opt, "hparams": _required(opt) | {hp: value}}
        if _outcome(spec)[0] == "accepted":
            out.append(pytest.param(spec, id=p.id))
    return out


@pytest.mark.slow
def test_accepted_values_leave_a_record(tmp_path):
    """Every accepted value, one step on a tiny net: a record that says what happened
    (finished, or diverged with its reason), never an exception."""
    from pinn_ng.pipeline import records

    bad = []
    for case in accepted_cases():
        spec = {**case.values[0], "max_steps": 1, "max_seconds": None}
        out = tmp_path / case.id.replace("/", "_")
        try:
            meta = runner.run(spec, out, progress=False)
        except Exception as exc:  # noqa: BLE001 - collected, reported together
            bad.append(f"{case.id}: {type(exc).__name__}: {exc}")
            continue
        if not records.is_complete(out) or meta["status"] not in ("finished", "diverged") \
                or (meta["status"] == "diverged" and not meta["reason"]):
            bad.append(f"{case.id}: {meta['status']} {meta['reason']}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------ signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_never_leaves_a_finished_record(sig, tmp_path):
    """A run stopped by SIGTERM / SIGINT mid-training exits non-zero, and whatever it leaves
    (nothing, or a checkpoint) never claims ``finished``."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinn_ng.cli", "run", *BASE_RUN, "--max-steps", "100000",
         "--max-seconds", "600", "--eval-every", "1000", "--out", str(out)],
        stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the clock starts after compilation
            if "compiled" in line:
                break
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in err
    meta = out / "meta.json"
    assert not meta.exists() or json.loads(meta.read_text())["status"] != "finished"
