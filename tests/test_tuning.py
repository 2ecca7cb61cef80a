"""The tuning stage (issue 12): search spaces, seeded trial tables, scoring, selection, errors.

Cheap: no training here (hand-written run records); the smoke pipeline in test_pipeline.py runs
a real study end to end.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pinn_ng import cli
from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import records, tuning

REPO = Path(__file__).resolve().parents[1]


def preset(*overrides) -> dict:
    cfg = pcfg.load_yaml(REPO / "config" / "default.yaml")
    for o in overrides:
        cfg = pcfg.merge(cfg, o if isinstance(o, dict) else pcfg.load_yaml(o))
    return cfg


def _study(tmp_path, seed=0, trials=(16, 8), name="s", optimizers=("spring", "adam", "sgd")):
    cfg = preset({"tuning": {"search_seed": seed, "studies": {
        name: {"problems": ["poisson2d"], "optimizers": list(optimizers),
                               "trials": list(trials), "budget": {"steps": 4}}}}})
    study = pcfg.plan(cfg, check_optimizers=False).studies[name]
    path = tmp_path / f"study{seed}.json"
    path.write_text(json.dumps(study.to_json(), sort_keys=True))
    return study, path


def _pinn_ng(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pinn_ng.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


# ------------------------------------------------------------------------------ draws


def test_trial_table_is_identical_across_processes_and_differs_by_seed(tmp_path):
    study, path = _study(tmp_path)
    # another process, with another salt of Python's str hash, writes the same bytes as this one
    out = tmp_path / "t.csv"
    proc = _pinn_ng("tune", "trials", "--study", str(path), "--stage", "1", "--out", str(out),
                    env={"PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == tuning.trials_csv(tuning.trial_rows(study, 1)).encode()
    assert len(tuning.read_trials(out)) == 3 * 16
    # Any order of the searches (any scheduling) gives each search the same trials.
    rev = tuning.Study(study.name, study.seed, list(reversed(study.searches)), study.narrow)
    key = lambda r: r["trial_id"]  # noqa: E731
    assert sorted(tuning.trial_rows(rev, 1), key=key) == \
        sorted(tuning.trial_rows(study, 1), key=key)
    other, _ = _study(tmp_path, seed=1)
    rows0, rows1 = tuning.trial_rows(study, 1), tuning.trial_rows(other, 1)
    assert [r["trial_id"] for r in rows0] == [r["trial_id"] for r in rows1]
    assert all(a["tuned"] != b["tuned"] for a, b in zip(rows0, rows1))
    # the seed is a SHA-256 of its parts: a fixed number, on every machine
    assert tuning.search_seed(0, "poisson2d", "spring", 480, 1) == \
        tuning.search_seed(0, "poisson2d", "spring", 480, 1)
    assert len({tuning.search_seed(0, "poisson2d", "spring", 480, s) for s in (1, 2)}) == 2
    # a study that grows keeps its first trials (a prefix of the Sobol sequence)
    longer = tuning.draw(study.searches[0].dims, 32, 7)
    assert tuning.draw(study.searches[0].dims, 16, 7) == longer[:16]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_marginals_cover_the_space(seed):
    dims = tuning.parse_space({"damping": {"loguniform": [1e-10, 1e-3]},
                               "momentum": {"uniform": [0.0, 0.999]},
                               "iters": {"int": [1, 4]},
                               "ema": {"choice": [0, 0.3, 0.6, 0.9]}}, "t")
    configs = tuning.draw(dims, 16, seed)
    assert len(configs) == 16
    decades = np.floor(np.log10([c["damping"] for c in configs]))
    assert sorted(set(decades)) == list(range(-10, -3))  # every decade of 1e-10 … 1e-3
    assert all(1e-10 <= c["damping"] <= 1e-3 for c in configs)
    eighths = np.floor(np.array([c["momentum"] for c in configs]) / 0.999 * 8)
    assert np.bincount(eighths.astype(int), minlength=8).tolist() == [2] * 8  # Sobol strata
    assert sorted(c["iters"] for c in configs) == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert sorted(c["ema"] for c in configs) == [0] * 4 + [0.3] * 4 + [0.6] * 4 + [0.9] * 4
    for c in configs:  # rounded: the table does not depend on the platform's last bit
        assert float(f"{c['damping']:.5e}") == c["damping"]


def test_grids_are_enumerated_in_full_without_stage_2():
    cfg = preset()
    dims = pcfg._space(cfg, "engd")
    assert tuning.is_grid(dims) and tuning.grid_size(dims) == 48
    configs = tuning.draw(dims, 3, 0)  # n does not apply to a grid
    assert len(configs) == 48 == len({json.dumps(c, sort_keys=True) for c in configs})
    assert {c["damping"] for c in configs} == {1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 0.0}
    search = tuning.Search("poisson2d", "engd", "engd", 480, dims, {}, (8, 8))
    assert search.n_trials(1) == 48 and search.n_trials(2) == 0
    hf = pcfg._space(cfg, "hessian_free")
    assert tuning.grid_size(hf) == 48


def test_stage_2_narrows_around_the_best_and_stays_inside():
    dims = tuning.parse_space({"damping": {"loguniform": [1e-10, 1e-3]},
                               "momentum": {"uniform": [0.0, 0.999]},
                               "it": {"int": [100, 300]},
                               "ema": {"choice": [0, 0.3, 0.6, 0.9]}}, "t")
    best = [{"damping": 1e-9, "momentum": 0.9, "it": 120, "ema": 0.3},
            {"damping": 1e-6, "momentum": 0.95, "it": 150, "ema": 0.6}]
    n = {d.name: d for d in tuning.narrow(dims, best)}
    assert n["damping"].values == (1e-10, 1e-5)  # ±1 decade, clipped to 1e-10
    assert n["momentum"].values == (0.9 - 0.24975, 0.999)  # ±25 % of the range, clipped
    assert n["it"].values == (100, 200)
    assert n["ema"].values == (0.3, 0.6)
    assert tuning.narrow(dims, []) == dims  # no finite stage-1 trial: stage 1's space again
    assert all(n["damping"].lo <= c["damping"] <= n["damping"].hi
               for c in tuning.draw(tuple(n.values()), 16, 3))


# ------------------------------------------------------------------------------ selection


def _trial_record(runs, trial_id, spec, status="finished", l2=1e-2, loss=1.0):
    rows = [] if status == "failed" else [
        {"step": 0, "time": 0.0, "loss": 10.0, "l2": 1.0, "rms_l2": 1.0, "rel_l2": 1.0,
         "step_size": 0.0},
        {"step": 4, "time": 0.1, "loss": loss, "l2": l2, "rms_l2": l2, "rel_l2": l2,
         "step_size": 1.0}]
    meta = {"run_id": trial_id, "spec": spec, "N": 40, "n_params": 33, "steps": 4,
            "seconds": 0.1, "status": status, "diverged": status != "finished",
            "final": {"l2": l2 if status != "failed" else math.nan}}
    records.write_record(runs / trial_id, rows, ["step", "time", "loss", "l2", "rms_l2",
                                                  "rel_l2", "step_size"], meta)


def test_selection_scores_failures_inf_breaks_ties_and_flags_edges(tmp_path):
    _, path = _study(tmp_path, trials=(6,), optimizers=("spring",))
    table = tmp_path / "stage1" / "trials.csv"
    tuning.write_trials(path, 1, table)
    rows = tuning.read_trials(table)
    runs = tmp_path / "stage1" / "runs"
    outcomes = [("finished", 0.5, 2.0), ("diverged", math.nan, math.nan),
                ("failed", math.nan, math.nan), ("finished", 1e-3, 5.0),
                ("finished", 1e-3, 4.0),  # same L2 as trial 3, lower loss: wins
                ("diverged", 1e-6, 1.0)]  # diverged late: finite L2, still +inf
    for r, (status, l2, loss) in zip(rows, outcomes):
        _trial_record(runs, r["trial_id"], r["spec"], status, l2, loss)
    warned = []
    best = tuning.write_selection(path, [table], [runs], tmp_path / "best.json",
                                  tmp_path / "best.md", tmp_path / "results.csv",
                                  warn=warned.append)
    (s,) = best["searches"]
    assert s["best"]["trial_id"] == rows[4]["trial_id"]
    assert s["best"]["hparams"] == rows[4]["spec"]["hparams"]
    assert s["failed"] == 3 and s["trials"] == 6
    res = __import__("pandas").read_csv(tmp_path / "results.csv")
    assert res.score.tolist()[1:3] == [math.inf, math.inf] and res.score[5] == math.inf
    assert tuning.best_hparams(tmp_path / "best.json", "poisson2d", "spring", 480) == \
        rows[4]["spec"]["hparams"]
    # exact ties in L2 and loss: the earlier trial
    key = [tuning.score_key({"stage": 1, "index": i}, {"status": "finished",
                                                        "final_l2": 1e-3, "final_loss": 1.0})
           for i in (3, 1)]
    assert min(key)[3] == 1
    # a best value at an edge: a warning in the table and through warn()
    dims = tuning.parse_space({"damping": {"loguniform": [1e-10, 1e-3]},
                               "momentum": {"uniform": [0.0, 0.999]}}, "t")
    w = tuning.edge_warnings(dims, {"damping": 1.2e-10, "momentum": 0.5})
    assert len(w) == 1 and "lower edge" in w[0] and w[0].startswith("damping")
    assert len(tuning.edge_warnings(dims, {"damping": 1e-6, "momentum": 0.998})) == 1
    assert not tuning.edge_warnings(dims, {"damping": 1e-6, "momentum": 0.5})
    text = (tmp_path / "best.md").read_text()
    assert "| poisson2d | SPRING | 480 | damping | LU[1e-10, 0.001] |" in text
    assert ("| ⚠" in text) == bool(s["warnings"])
    assert len(warned) == len(s["warnings"])


def test_a_failing_trial_is_recorded_and_an_interrupted_one_is_not(tmp_path, capsys):
    _, path = _study(tmp_path, trials=(2,), optimizers=("adam",))
    table = tmp_path / "trials.csv"
    tuning.write_trials(path, 1, table)
    rows = tuning.read_trials(table)
    # a value the optimizer rejects when the trial runs (η < 0): recorded as failed, exit 0
    rows[0]["spec"]["hparams"]["learning_rate"] = -1.0
    rows[0]["spec"]["optimizer"] = "engd_woodbury"
    rows[0]["spec"]["hparams"]["damping"] = 1e-8
    table.write_text(tuning.trials_csv([{**r, "tuned": {}} for r in rows]))
    out = tmp_path / "runs" / rows[0]["trial_id"]
    assert cli.main(["tune", "trial", "--trials", str(table), "--trial", rows[0]["trial_id"],
                     "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "learning_rate" in meta["reason"]
    assert tuning.score(tuning.read_outcome(out)) == math.inf
    # a process that died (killed for memory: 137) -> a failed record; SIGTERM (143) -> none
    t1 = rows[1]["trial_id"]
    out1 = tmp_path / "runs" / t1
    assert cli.main(["tune", "failed", "--exit-status", "143", "--trials", str(table),
                     "--trial", t1, "--out", str(out1)]) == 143
    assert not records.is_complete(out1)
    log = tmp_path / "t1.log"
    log.write_text("compiling\nSegmentation fault\n")
    assert cli.main(["tune", "failed", "--exit-status", "137", "--trials", str(table),
                     "--trial", t1, "--out", str(out1), "--log", str(log)]) == 0
    meta = json.loads((out1 / "meta.json").read_text())
    assert meta["status"] == "failed" and "SIGKILL" in meta["reason"]
    assert "Segmentation fault" in meta["reason"]
    assert tuning.score(tuning.read_outcome(out1)) == math.inf
    # `pinn-ng gather` reads failed records like any other
    from pinn_ng.pipeline import gather

    gather.gather(tmp_path / "runs", tmp_path)
    summ = __import__("pandas").read_csv(tmp_path / "summary.csv")
    assert summ.diverged.all() and (summ.steps == 0).all()


# ------------------------------------------------------------------------------ presets


def test_shipped_spaces_are_the_papers_and_kfacs():
    cfg = preset()
    spaces = cfg["tuning"]["spaces"]
    assert pcfg._space(cfg, "adam")[0].to_json() == {"loguniform": [1e-4, 0.5]}
    assert {d.name: d.to_json() for d in pcfg._space(cfg, "spring_fixed")} == {
        "damping": {"loguniform": [1e-10, 1e-3]}, "momentum": {"uniform": [0.8, 0.999]},
        "learning_rate": {"loguniform": [1e-4, 1e-1]}}
    assert pcfg._space(cfg, "engd_w", "poisson100d")[0].values == (1e-10, 1e-1)
    assert pcfg._space(cfg, "engd_w", "poisson5d")[0].values == (1e-15, 1e-5)
    assert "kfac" in spaces and "kfac" in cfg["optimizers"]
    kfac_study = pcfg.plan(preset({"tuning": {"studies": {"t": {
        "problems": ["poisson2d"], "optimizers": ["kfac"], "trials": [2],
        "budget": {"steps": 2}}}}}), check_optimizers=False).studies["t"]
    assert [d.name for d in kfac_study.searches[0].dims] == ["ema_decay", "momentum", "damping"]
    smoke = pcfg.plan(preset(REPO / "config" / "smoke.yaml"), check_optimizers=False)
    (study,) = smoke.studies.values()
    assert len(study.searches) == 2 and {s.n_trials(1) for s in study.searches} == {2}
    assert {s.n_trials(2) for s in study.searches} == {2}
    paper = pcfg.plan(preset(REPO / "config" / "paper.yaml"), check_optimizers=False)
    assert {s.n_trials(1) for s in paper.studies["paper5d"].searches} == {50, 48}
    lines = pcfg.tuning_estimate(paper)
    assert any("poisson5d 1158.89 h" in ln for ln in lines)  # (5·100 + 2·48) × 7000 s


def test_a_space_keyed_by_an_optimizer_name_checks_its_hyperparameters():
    """As KFAC's: keyed by the optimizer's name (no label of that name needed); its names are
    checked against the optimizer's signature."""
    space = {"tuning": {"spaces": {"kfac": {"space": {"ema": {"uniform": [0.5, 0.99]}}}}}}
    with pytest.raises(pcfg.ConfigError, match="tuning.spaces.kfac.space.ema: optimizer 'kfac' "
                                               "has no hyper-parameter 'ema'; valid: damping, "
                                               "momentum, ema_decay"):
        pcfg.plan(preset(space), check_optimizers=False)
    pcfg.plan(preset(), check_optimizers=False)  # the shipped KFAC space, names checked


@pytest.mark.parametrize("override,expected", [
    ({"spaces": {"adam": {"space": {"learning_rate": {"loguniform": [0.5, 1e-4]}}}}},
     "config key tuning.spaces.adam.space.learning_rate.loguniform: lo must be below hi"),
    ({"spaces": {"adam": {"space": {"learning_rate": {"loguniform": [0.0, 1.0]}}}}},
     "tuning.spaces.adam.space.learning_rate.loguniform[0]"),
    ({"spaces": {"adam": {"space": {"learning_rate": {"logunifrom": [1e-4, 1.0]}}}}},
     "tuning.spaces.adam.space.learning_rate"),
    ({"spaces": {"adam": {"space": {"learning_rate": {"int": [1.5, 3]}}}}},
     "tuning.spaces.adam.space.learning_rate.int[0]"),
    ({"spaces": {"adam": {"space": {"lr": {"uniform": [0, 1]}}}}},
     "optimizer 'adam' has no hyper-parameter 'lr'; valid: learning_rate"),
    ({"spaces": {"adma": {"space": {"learning_rate": {"uniform": [0, 1]}}}}},
     "tuning.spaces.adma: 'adma' is not a defined optimizer label"),
    ({"studies": {"tune2d": {"optimizers": ["lbfgs"]}}},
     "tuning.spaces.lbfgs: no search space"),
    ({"studies": {"tune2d": {"trials": [8, 8, 8]}}}, "tuning.studies.tune2d.trials"),
    ({"studies": {"tune2d": None}}, "experiments.convergence.tuned: study 'tune2d' is "
                                    "switched off"),
])
def test_bad_tuning_section_is_one_line_naming_the_key(override, expected):
    with pytest.raises(pcfg.ConfigError) as err:
        pcfg.plan(preset({"tuning": override}), check_optimizers=False)
    assert expected in str(err.value), str(err.value)


def test_bad_space_from_the_command_line_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuning:\n  spaces:\n    spring:\n      space:\n        momentum: "
                   "{uniform: [0.9, 0.1]}\n")
    proc = _pinn_ng("plan", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "tuning.spaces.spring" in lines[0] and "lo must be below hi" in lines[0]
