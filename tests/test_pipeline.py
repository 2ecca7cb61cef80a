"""The benchmark pipeline (issue 4): training loop, run records, presets, Snakemake end to end.

The end-to-end tests (``-m slow``; CI runs them) run the smoke preset once (module fixture)
in a temporary directory; later tests reuse its outputs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from pinn_ng import models, optim, problems, train
from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import families, figures, gather, records, runner, tuning, tuning_figures
from pinn_ng.residuals import ResidualFn

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
# One xdist worker runs this whole module, so the smoke pipeline fixture is built once.
pytestmark = pytest.mark.xdist_group("pipeline")

PRESETS = {"default": [], "smoke": ["--configfile", str(REPO / "config" / "smoke.yaml")],
           "paper": ["--configfile", str(REPO / "config" / "paper.yaml")]}
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir, *args, check=True, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def preset(*overrides) -> dict:
    cfg = pcfg.load_yaml(REPO / "config" / "default.yaml")
    for o in overrides:
        cfg = pcfg.merge(cfg, o if isinstance(o, dict) else pcfg.load_yaml(o))
    return cfg


# ------------------------------------------------------------------------------ presets


def test_schema_names_come_from_the_registries_not_copies():
    raw = pcfg.load_yaml(REPO / "config" / "schema.yaml")  # as written: no copied names
    assert "enum" not in raw["$defs"]["problem_name"]
    assert "enum" not in raw["$defs"]["optimizer_name"]
    assert "pattern" not in raw["properties"]["experiments"]["propertyNames"]
    text = (REPO / "config" / "schema.yaml").read_text()
    assert "poisson100d" not in text and "hessian_free" not in text
    schema = pcfg.load_schema()
    assert schema["$defs"]["problem_name"]["enum"] == problems.names()
    assert schema["$defs"]["optimizer_name"]["enum"] == optim.names()
    pattern = schema["properties"]["experiments"]["propertyNames"]["pattern"]
    assert pattern == families.experiment_pattern()
    for kind in families.EXPERIMENT_KINDS:
        assert re.match(pattern, kind) and re.match(pattern, kind + "_5d")
    assert not re.match(pattern, "speedup") and not re.match(pattern, "convergence-5d")


def test_one_table_of_figure_families():
    assert families.figure_names({"convergence": {"poisson5d", "heat4d"}, "scaling": {"x"},
                                  "effective_dimension": {"poisson5d"}}) == \
        ["speedup", "convergence_heat4d", "convergence_poisson5d", "effective_dimension",
         "performance_profile", "solution_heat4d", "solution_poisson5d"]
    for family, spec in families.FAMILIES.items():
        name = f"{family}_poisson5d" if spec.per_problem else family
        assert families.parse_figure(name) == (family, "poisson5d" if spec.per_problem else None)
        assert callable(figures._DRAW[family])
        assert families.experiment_kind(spec.experiment + "_x") == spec.experiment
    with pytest.raises(ValueError, match="convergence_<problem>"):
        families.parse_figure("convergence")
    assert not hasattr(figures, "KINDS")


def test_presets_ship_with_the_package():
    assert pcfg.preset_names() == ["cpu-paper", "default", "fidelity", "paper", "smoke"]
    for name in pcfg.preset_names() + ["schema"]:
        shipped = pcfg.PRESETS_DIR / f"{name}.yaml"
        assert (REPO / "config" / f"{name}.yaml").resolve() == shipped.resolve()
    assert pcfg.preset_path("smoke") == pcfg.PRESETS_DIR / "smoke.yaml"
    assert pcfg.preset_path("smoke.yaml") == pcfg.PRESETS_DIR / "smoke.yaml"
    assert pcfg.preset_path(REPO / "config" / "paper.yaml") == REPO / "config" / "paper.yaml"
    with pytest.raises(pcfg.ConfigError, match="shipped presets: .*smoke"):
        pcfg.preset_path("smoek")


def test_git_info_degrades_outside_a_checkout(monkeypatch):
    info = records.git_info()
    assert set(info) == {"commit", "dirty"}
    monkeypatch.setattr(records, "source_tree", lambda: None)  # e.g. an installed wheel
    assert records.git_info() == {"commit": None, "dirty": None}


@pytest.mark.parametrize("name", ["default", "smoke", "paper"])
def test_every_preset_expands(name):
    extra = [] if name == "default" else [REPO / "config" / f"{name}.yaml"]
    plan = pcfg.plan(preset(*extra))
    assert plan.runs and plan.figures
    assert "speedup" in plan.figures and "effective_dimension" in plan.figures
    assert any(f.startswith("convergence_") for f in plan.figures)
    assert any(f.startswith("nystrom_") for f in plan.figures)
    for spec in plan.runs.values():  # every run spec is complete and accepted by the runner
        runner.complete_spec({k: v for k, v in spec.items()})


def test_fidelity_preset_runs_the_logged_configurations():
    """The fidelity preset: paper nets and batches, step budgets, and the configurations of
    the authors' logged runs: ENGD on its own smaller net (convergence only), SPRING 5d at the
    logged μ beside the text's, SPRING on heat10d."""
    plan = pcfg.plan(preset(REPO / "config" / "fidelity.yaml"))
    specs = {(s["problem"], s["label"]): s for s in plan.runs.values()}
    engd = specs["poisson5d", "engd"]
    assert engd["widths"] == [5, 64, 48, 32, 16, 1] and engd["hparams"]["solver"] == "lstsq"
    assert engd["max_steps"] == 15 and engd["max_seconds"] is None
    assert specs["poisson5d", "engd_w"]["widths"] == [5, 64, 64, 48, 48, 1]
    assert specs["poisson5d", "spring"]["hparams"]["momentum"] == 0.0633
    assert specs["poisson5d", "spring_mu_text"]["hparams"]["momentum"] == 0.3115
    assert specs["heat10d", "spring"]["widths"][0] == 11
    assert (specs["poisson100d", "spring"]["n_interior"],
            specs["poisson100d", "spring"]["n_boundary"]) == (100, 50)
    assert specs["poisson5d", "sgd"]["max_steps"] == 1000
    # every run starts from the authors' initialisation
    assert {s.get("network") for s in plan.runs.values()} == {"mlp_torch"}
    # the label's net applies to convergence experiments only: timing sweeps keep theirs
    cfg = preset({"experiments": {"scaling": {"optimizers": ["engd"]}}})
    scaling = [pcfg.plan(cfg, check_optimizers=False).runs[r]
               for r in pcfg.plan(cfg, check_optimizers=False).experiments["scaling"]]
    assert scaling and all(s["widths"] == [5, 64, 64, 48, 48, 1] for s in scaling)
    with pytest.raises(pcfg.ConfigError, match="optimizers.engd.widths.poisson5d"):
        pcfg.plan(preset(REPO / "config" / "fidelity.yaml",
                         {"optimizers": {"engd": {"widths": {"poisson5d": [3, 8, 1]}}}}))


@pytest.mark.parametrize("name", [  # the smoke preset's DAG in the default run
    n if n == "smoke" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(PRESETS)])
def test_snakemake_dry_run(name, tmp_path):
    proc = snakemake(tmp_path, "-n", *PRESETS[name])
    out = proc.stdout + proc.stderr
    assert "run" in out and "gather" in out and "figure" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("override,expected", [
    ({"dtype": "float16"}, ["dtype", "float64", "float32"]),
    ({"experiments": {"convergence": {"optimizers": ["adamw"]}}},
     ["experiments.convergence.optimizers[0]", "adamw", "engd_w", "spring"]),
    ({"experiments": {"convergence": {"problems": ["poisson7d"]}}},
     ["experiments.convergence.problems[0]", "poisson7d", "poisson5d"]),
    ({"experiments": {"convergenze": None}}, ["convergenze", "convergence", "scaling"]),
    ({"optimizers": {"engd_w": {"hparams": {"damping": -1.0}}}},
     ["optimizers.engd_w.hparams", "damping"]),
    ({"optimizers": {"spring": {"optimizer": "springg"}}},
     ["optimizers.spring.optimizer", "springg", "engd_woodbury"]),
    ({"problems": {"poisson5d": {"widths": [3, 8, 1]}}},
     ["problems.poisson5d.widths", "input dimension 5"]),
    ({"nystrom_table": {"fractions": [1.5]}}, ["nystrom_table.fractions[0]", "1.5"]),
])
def test_bad_preset_value_names_key_and_allowed_values(override, expected):
    with pytest.raises(pcfg.ConfigError) as err:
        pcfg.plan(preset(override))
    for text in expected:
        assert text in str(err.value), str(err.value)


@pytest.mark.slow  # a bad preset through Snakemake in one line: test_cli_errors.py
def test_bad_value_stops_snakemake_before_any_run(tmp_path):
    proc = snakemake(tmp_path, "--config", "dtype=float16", check=False)
    assert proc.returncode != 0
    assert "dtype" in proc.stderr and "float64" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_overrides_from_command_line_are_coerced():
    plan = pcfg.plan(preset(REPO / "config" / "smoke.yaml",
                            {"budget_scale": "2", "eval_every": "3", "data_seed": "5"}))
    spec = next(iter(plan.runs.values()))
    assert spec["eval_every"] == 3 and spec["data_seed"] == 5
    cfg = preset({"experiments": {"convergence": {"budget": {"seconds": "1e1"}}}},
                 {"budget_scale": 0.5})
    conv = [s for s in pcfg.plan(cfg, check_optimizers=False).runs.values()
            if s["label"] == "sgd"]
    assert conv[0]["max_seconds"] == 5.0


def test_compilation_cache_env_from_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = pcfg.plan(preset(REPO / "config" / "smoke.yaml")).compilation_cache_env()
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / ".cache" / "jax")  # absolute
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0  # > 0: JAX's file lock is on
    for off in (None, "null"):  # `--config compilation_cache=null`
        plan = pcfg.plan(preset(REPO / "config" / "smoke.yaml", {"compilation_cache": off}))
        assert plan.compilation_cache_env() == {}
    with pytest.raises(pcfg.ConfigError, match="compilation_cache"):
        pcfg.plan(preset({"compilation_cache": 3}), check_optimizers=False)
    assert plan.compilation_cache_error() is None  # off: nothing to check
    ok = pcfg.plan(preset(REPO / "config" / "smoke.yaml",
                          {"compilation_cache": str(tmp_path / "c" / "jax")}))
    assert ok.compilation_cache_error() is None and (tmp_path / "c" / "jax").is_dir()
    (tmp_path / "file").write_text("")
    bad = pcfg.plan(preset(REPO / "config" / "smoke.yaml",
                           {"compilation_cache": str(tmp_path / "file" / "jax")}))
    err = bad.compilation_cache_error()
    assert "cannot be created" in err and "compilation_cache=null" in err and "\n" not in err


def test_experiment_replicates_override_the_top_level():
    cfg = preset(REPO / "config" / "smoke.yaml",
                 {"experiments": {"convergence": {"replicates": 3}}})
    plan = pcfg.plan(cfg, check_optimizers=False)
    conv = [plan.spec(r) for r in plan.experiments["convergence"]]
    assert sorted(s["replicate"] for s in conv if s["label"] == "adam") == [0, 1, 2]
    assert sorted(s["replicate"] for s in conv if s["label"] == "adam_tuned") == [0, 1, 2]
    assert sorted(s["data_seed"] for s in conv if s["label"] == "adam") == [0, 1, 2]
    scaling = [plan.runs[r] for r in plan.experiments["scaling"]]
    assert {s["replicate"] for s in scaling} == {0}  # the top-level value (1) elsewhere
    default = pcfg.plan(preset(), check_optimizers=False)
    conv = [default.spec(r) for r in default.experiments["convergence"]]
    assert {s["replicate"] for s in conv} == {0, 1}  # the default preset: 2 seeds
    with pytest.raises(pcfg.ConfigError, match="experiments.convergence.replicates"):
        pcfg.plan(preset({"experiments": {"convergence": {"replicates": 0}}}))


# ------------------------------------------------------------------------------ tables


def _record(runs_dir, name, *, replicate, final_l2, events="absent", label="engd_w",
            l2s=None, steps=10, problem="poisson2d"):
    """A hand-written run record, as `pinn-ng run` writes it (only the keys gather reads)."""
    spec = {"problem": problem, "label": label, "display": label.upper(),
            "optimizer": "engd_woodbury", "hparams": {"damping": 1e-8}, "widths": [2, 6, 1],
            "n_interior": 20, "n_boundary": 8, "replicate": replicate,
            "data_seed": replicate, "model_seed": 1 + replicate, "max_steps": steps,
            "max_seconds": None, "eval_every": 5, "dtype": "float64"}
    l2s = l2s or [1.0, 0.1, final_l2]
    rows = [{"step": i * steps // (len(l2s) - 1), "time": 0.5 * i + 0.1 * replicate,
             "loss": 1.0, "l2": v, "rms_l2": v, "rel_l2": v, "step_size": 1.0}
            for i, v in enumerate(l2s)]
    meta = {"run_id": name, "spec": spec, "N": 28, "n_params": 25, "steps": steps,
            "seconds": rows[-1]["time"], "seconds_per_step": rows[-1]["time"] / steps,
            "compile_seconds": 1.0, "diverged": False, "reason": None,
            "stopped_by": "max_steps", "final": {"l2": final_l2, "rel_l2": final_l2},
            "best_l2": min(l2s)}
    if events != "absent":
        meta["events"] = events
    records.write_record(runs_dir / name, rows, list(rows[0]), meta)


def test_gather_event_counts_and_spread_over_replicates(tmp_path):
    runs = tmp_path / "runs"
    ev = {"jitter_steps": 3, "cholesky_fallback_steps": 1, "shift_grown_steps": 0,
          "nonfinite_steps": 2, "first_jitter_step": 7, "first_cholesky_fallback_step": 9}
    _record(runs, "a0", replicate=0, final_l2=1e-3, events=ev)
    _record(runs, "a1", replicate=1, final_l2=4e-3, events={"jitter_steps": 0,
                                                            "nonfinite_steps": 0})
    _record(runs, "a2", replicate=2, final_l2=2e-3)  # an older record: no `events`
    _record(runs, "b0", replicate=0, final_l2=5e-2, label="other")
    gather.gather(runs, tmp_path)
    summ = pd.read_csv(tmp_path / "summary.csv").set_index("run_id")
    assert summ.loc["a0", gather.EVENT_COLUMNS].tolist() == [3, 1, 0, 2]
    assert summ.loc["a0", "fallback_steps"] == 4  # jitter + Cholesky fallback + shift
    assert summ.loc["a0", gather.FIRST_EVENT_COLUMNS].tolist() == [7, 9]
    assert summ.loc[["a1", "a2"], gather.FIRST_EVENT_COLUMNS].isna().all().all()
    # reported events count, unreported ones are unknown (empty), never 0
    assert summ.loc["a1", "jitter_steps"] == 0 and summ.loc["a1", "fallback_steps"] == 0
    assert summ.loc["a1", ["cholesky_fallback_steps", "shift_grown_steps"]].isna().all()
    assert summ.loc["a2", gather.EVENT_COLUMNS + ["fallback_steps"]].isna().all()
    text = (tmp_path / "summary.csv").read_text().splitlines()
    header = text[0].split(",")
    a0 = next(line for line in text if line.startswith("a0,")).split(",")
    assert a0[header.index("jitter_steps")] == "3"  # integers, not 3.0
    assert summ.loc["a0", "config_id"] == summ.loc["a2", "config_id"] != summ.loc["b0",
                                                                                  "config_id"]

    by = pd.read_csv(tmp_path / "summary_by_config.csv")
    assert by.columns.tolist() == gather.BY_CONFIG_COLUMNS
    by = by.set_index("label")
    assert by.loc["engd_w", "replicates"] == 3 and by.loc["other", "replicates"] == 1
    assert by.loc["engd_w", ["final_l2_median", "final_l2_min", "final_l2_max"]].tolist() == \
        [2e-3, 1e-3, 4e-3]
    assert by.loc["engd_w", "fallback_steps_max"] == 4
    assert by.loc["other", "final_l2_median"] == by.loc["other", "final_l2_max"] == 5e-2


def test_replicate_band_median_and_extremes_on_a_common_grid():
    runs = [pd.DataFrame({"time": [0.0, 1.0, 2.0], "l2": [1.0, 1e-2, 1e-4]}),
            pd.DataFrame({"time": [0.0, 0.5, 1.5], "l2": [1.0, 1e-1, 1e-3]}),
            pd.DataFrame({"time": [0.0, 1.0, 1.8], "l2": [1.0, 1e-3, 1e-5]})]
    grid, med, lo, hi = figures.replicate_band(runs, "time")
    assert grid.tolist() == [0.0, 0.5, 1.0, 1.5]  # union of evaluations, to the shortest run
    np.testing.assert_allclose(med, [1.0, 1e-1, 1e-2, 1e-3], rtol=1e-12)
    np.testing.assert_allclose(lo, [1.0, 10 ** -1.5, 1e-3, 10 ** -4.25], rtol=1e-12)
    np.testing.assert_allclose(hi, [1.0, 1e-1, 1e-2, 1e-3], rtol=1e-12)  # log-linear in time
    assert (lo <= med).all() and (med <= hi).all()


def test_convergence_figure_with_replicates(tmp_path):
    runs = tmp_path / "runs"
    for rep, final in enumerate([1e-3, 4e-3, 2e-3]):
        _record(runs, f"a{rep}", replicate=rep, final_l2=final)
    _record(runs, "b0", replicate=0, final_l2=5e-2, label="other")
    gather.gather(runs, tmp_path, {"experiments": {"convergence": ["a0", "a1", "a2", "b0"]}})
    assert figures.available(figures.load(tmp_path)) == ["convergence_poisson2d",
                                                         "performance_profile",
                                                         "solution_poisson2d"]
    plt, _ = figures._setup()
    tables = figures.load(tmp_path)
    fig = figures.fig_convergence(tables, plt, None, figures._palette(tables), "poisson2d")
    for ax in fig.axes:
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["ENGD_W (median, min–max of 3)", "OTHER"]
        assert len(ax.collections) == 1  # one band: the optimizer with replicates
    plt.close(fig)


@pytest.mark.parametrize("problem", ["poisson5d", "poisson100d", "heat4d", "logfp9d"])
def test_convergence_figure_draws_the_published_kfac_star_line(tmp_path, problem):
    """Figure 3: our KFAC / KFAC* curves next to the published KFAC* final error (dashed)."""
    runs = tmp_path / "runs"
    _record(runs, "k", replicate=0, final_l2=1e-3, label="kfac_star", problem=problem)
    _record(runs, "s", replicate=0, final_l2=2e-3, label="spring", problem=problem)
    gather.gather(runs, tmp_path, {"experiments": {"convergence": ["k", "s"]}})
    plt, _ = figures._setup()
    tables = figures.load(tmp_path)
    fig = figures.fig_convergence(tables, plt, None, figures._palette(tables), problem)
    want = figures.PUBLISHED_KFAC_STAR_L2[problem][0]
    for ax in fig.axes:
        handles, labels = ax.get_legend_handles_labels()
        assert labels[:2] == ["KFAC_STAR", "SPRING"]
        ref = [h for h, lab in zip(handles, labels) if lab.startswith("KFAC* published")]
        assert len(ref) == 1 and ref[0].get_linestyle() == "--"
        assert ref[0].get_ydata()[0] == want and f"{want:.2e}" in labels[-1]
    plt.close(fig)


def test_convergence_figure_has_no_published_line_where_the_paper_has_none(tmp_path):
    runs = tmp_path / "runs"
    _record(runs, "a", replicate=0, final_l2=1e-3)
    gather.gather(runs, tmp_path, {"experiments": {"convergence": ["a"]}})
    plt, _ = figures._setup()
    tables = figures.load(tmp_path)
    fig = figures.fig_convergence(tables, plt, None, figures._palette(tables), "poisson2d")
    assert all("published" not in lab for ax in fig.axes
               for lab in ax.get_legend_handles_labels()[1])
    plt.close(fig)


# ------------------------------------------------------------------------------ training loop


def _tiny(seed=1):
    problem = problems.get("poisson2d")
    init, apply = models.mlp((2, 6, 1))
    return problem, init(jax.random.PRNGKey(seed)), apply


def _train(optimizer, diagnostics=lambda s: {}, uses_grads=True, **kw):
    problem, params, apply = _tiny()
    kw = {"max_steps": 5, "eval_every": 2, "n_interior": 20, "n_boundary": 8, **kw}
    return train.train(problem, apply, params, optimizer, ResidualFn(problem, apply),
                       uses_grads=uses_grads, diagnostics=diagnostics, progress=False,
                       log=lambda m: None, **kw)


def test_train_rows_budget_and_timings():
    res = _train(optax.with_extra_args_support(optax.adam(1e-2)), max_steps=None,
                 max_seconds=0.3, eval_every=3)
    assert res.stopped_by == "max_seconds" and res.seconds >= 0.3 and not res.diverged
    steps = [r["step"] for r in res.rows]
    assert steps[0] == 0 and steps[-1] == res.steps
    assert all(s % 3 == 0 for s in steps[:-1]) and steps == sorted(set(steps))
    times = [r["time"] for r in res.rows]
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert res.seconds == times[-1] and res.compile_seconds > 0
    for row in res.rows:
        assert set(train.BASE_COLUMNS) <= set(row)
        assert np.isfinite(row["loss"]) and np.isfinite(row["l2"])


def test_train_row_k_holds_the_loss_before_and_the_errors_after_step_k():
    """As documented for curve.csv: row k's loss is on batch k−1 at the parameters before the
    k-th step, its errors are at the parameters after it (row 0: the first step's loss)."""
    problem, params, apply = _tiny()
    rf = ResidualFn(problem, apply)
    opt = optim.engd_woodbury(rf, 1e-6)
    res = _train(opt, diagnostics=optim.diagnostics, uses_grads=False, max_steps=2,
                 eval_every=1, data_seed=3)
    theta, state = params, opt.init(params)
    update = jax.jit(opt.update)
    for k in range(2):
        batch = problem.sample(jax.random.fold_in(jax.random.PRNGKey(3), k), 20, 8)
        loss_before = float(rf.loss(theta, batch))
        updates, state = update(None, state, theta, batch=batch)
        theta = optax.apply_updates(theta, updates)
        np.testing.assert_allclose(res.rows[k + 1]["loss"], loss_before, rtol=1e-10)
        np.testing.assert_allclose(res.rows[k + 1]["l2"], problem.errors(apply, theta)["l2"],
                                   rtol=1e-8)
        np.testing.assert_allclose(res.rows[k + 1]["step_size"],
                                   float(optim.diagnostics(state)["step_size"]), rtol=1e-10)
    assert res.rows[0]["loss"] == res.rows[1]["loss"]
    assert res.rows[0]["l2"] == problem.errors(apply, params)["l2"]


def test_train_stops_on_divergence():
    nan_updates = optax.with_extra_args_support(optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda g, s, p=None: (jax.tree_util.tree_map(lambda x: x * jnp.nan, g), s)))
    res = _train(nan_updates, max_steps=50)
    assert res.diverged and res.steps == 1 and "non-finite" in res.reason

    # a handled numerical event (jitter, eigh fallback) is a diagnostic, counted, not divergence
    events = optax.with_extra_args_support(optax.sgd(0.0))
    res = _train(events, diagnostics=lambda s: {"jitter": jnp.ones(()),
                                                "cholesky_fallback": jnp.zeros(())},
                 max_steps=4)
    assert not res.diverged and res.steps == 4 and res.stopped_by == "max_steps"
    assert res.events == {"jitter_steps": 4, "cholesky_fallback_steps": 0,
                          "first_jitter_step": 1, "first_cholesky_fallback_step": None}
    assert res.rows[-1]["jitter"] == 1.0 and len(res.step_seconds) == 4

    # a solve reported as failed and left unrepaired (jitter='none') ends the run at its step
    def failed_from_step_3(state):
        return {"solve_failed": (state.count >= 3).astype(jnp.float64),
                "jitter": jnp.zeros(())}

    counting = optax.with_extra_args_support(optax.scale_by_schedule(lambda k: 0.0))
    res = _train(counting, diagnostics=failed_from_step_3, max_steps=10)
    assert res.diverged and res.steps == 3 and res.stopped_by == "diverged"
    assert "Cholesky factorisation failed at step 3" in res.reason
    assert res.events["first_jitter_step"] is None and "solve_failed" not in res.rows[-1]


def test_same_seed_same_l2_columns(tmp_path):
    spec = {"problem": "poisson2d", "optimizer": "engd_woodbury", "widths": [2, 6, 1],
            "hparams": {"damping": 1e-8, "learning_rate": "line_search"},
            "n_interior": 20, "n_boundary": 8, "max_steps": 6, "eval_every": 2}
    for name in ("a", "b"):
        runner.run(spec, tmp_path / name, progress=False)
    a, b = (pd.read_csv(tmp_path / n / "curve.csv") for n in ("a", "b"))
    for col in ("l2", "rms_l2", "rel_l2", "loss"):
        assert a[col].tolist() == b[col].tolist()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    for key in ("spec", "seeds", "versions", "device", "git", "steps", "seconds_per_step"):
        assert key in meta
    assert meta["seeds"] == {"data": 0, "model": 1} and meta["versions"]["jax"]


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    t = time.perf_counter()
    snakemake(work, *PRESETS["smoke"])
    plan = pcfg.plan(preset(REPO / "config" / "smoke.yaml"), check_optimizers=False)
    return work, plan, time.perf_counter() - t


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_smoke_pipeline_end_to_end(smoke):
    work, plan, _ = smoke
    res = work / "results"
    curves = pd.read_csv(res / "curves.csv")
    summary = pd.read_csv(res / "summary.csv")
    for col in ["run_id", "problem", "label", "optimizer", "N", "P", "step", "time", "loss",
                "l2", "rms_l2", "rel_l2", "step_size", "effective_dimension"]:
        assert col in curves.columns, col
    for col in ["problem", "label", "N", "final_l2", "best_l2", "steps", "seconds_per_step",
                "diverged"]:
        assert col in summary.columns, col
    assert sorted(summary.run_id) == sorted([*plan.runs, *plan.tuned])
    assert (summary.steps == 6).all() and not summary.diverged.any()
    assert set(summary.label) == {"adam", "engd", "engd_w", "engd_w_nystrom_gpu",
                                  "adam_tuned", "engd_w_tuned"}
    assert (summary.seconds_per_step > 0).all()
    for name in ("nystrom_table.csv", "nystrom_table.md"):
        assert (res / name).stat().st_size > 0
    by_config = pd.read_csv(res / "summary_by_config.csv")
    assert by_config.replicates.sum() == len(summary)
    for col in gather.EVENT_COLUMNS + ["fallback_steps", "config_id"]:
        assert col in summary.columns, col
    table = pd.read_csv(res / "nystrom_table.csv")
    assert {"standard_seconds", "gpu_seconds", "standard_mib", "gpu_mib"} <= set(table.columns)
    for fig in plan.figures + plan.tuning_figures:
        path = work / "figures" / f"{fig}.png"
        assert path.stat().st_size > 1000, fig


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_smoke_tuning_study(smoke, tmp_path):
    """The smoke preset's study: 2 optimizers × (2 + 2) trials, best.json, the table, the
    tuned final runs in the convergence experiment, the figures."""
    work, plan, _ = smoke
    tdir = work / "results" / "tuning" / "tunesmoke"
    study = plan.studies["tunesmoke"]
    # the table the pipeline wrote is the one this process draws (another process, same bytes)
    assert (tdir / "stage1" / "trials.csv").read_text() == \
        tuning.trials_csv(tuning.trial_rows(study, 1))
    best = json.loads((tdir / "best.json").read_text())
    assert [(s["label"], s["trials"], s["failed"]) for s in best["searches"]] == \
        [("adam", 4, 0), ("engd_w", 4, 0)]
    results = pd.read_csv(tdir / "results.csv")
    assert len(results) == 8 and sorted(set(results.stage)) == [1, 2]
    stage2 = tuning.read_trials(tdir / "stage2" / "trials.csv")
    for s in best["searches"]:
        assert s["best"] is not None and s["stage2_space"] is not None
        r = results[results.label == s["label"]]
        assert s["best"]["final_l2"] == r.final_l2.min()  # the best by final L2
        for row in stage2:  # stage 2 drew inside stage 1's space
            if row["label"] == s["label"]:
                (name, value), = row["tuned"].items()
                lo, hi = next(iter(s["space"][name].values()))
                assert lo <= value <= hi
    text = (tdir / "best.md").read_text()
    assert "| problem | optimizer | N | hyper-parameter | search space |" in text
    # tuned final runs: the best hyper-parameters, the experiment's 2 seeds
    summary = pd.read_csv(work / "results" / "summary.csv")
    exps = pd.read_csv(work / "results" / "experiments.csv")
    for s in best["searches"]:
        tuned = summary[summary.label == f"{s['label']}_tuned"]
        assert sorted(tuned.replicate) == [0, 1]
        assert {json.loads(h)["learning_rate" if s["label"] == "adam" else "damping"]
                for h in tuned.hparams} == {next(iter(s["best"]["tuned"].values()))}
        assert set(tuned.run_id) <= set(exps[exps.experiment == "convergence"].run_id)
    for fig in plan.tuning_figures:  # byte-identical when redrawn
        tuning_figures.draw(tdir / "best.json", tdir / "results.csv", fig,
                            tmp_path / f"{fig}.png")
        assert (tmp_path / f"{fig}.png").read_bytes() == \
            (work / "figures" / f"{fig}.png").read_bytes()


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_snakemake_report_has_every_figure_and_table(smoke):
    work, plan, _ = smoke
    snakemake(work, *PRESETS["smoke"], "--report", str(work / "report.html"))
    html = (work / "report.html").read_text(encoding="utf-8")
    for fig in plan.figures + plan.tuning_figures:
        assert f"{fig}.png" in html, fig
    assert "best.md" in html and "Sensitivity of the final L2 error" in html
    for table in ("summary.csv", "summary_by_config.csv", "curves.csv", "nystrom_table.csv"):
        assert table in html, table
    # captions (report/*.rst), chosen per figure by the `figure` wildcard
    assert "Effective dimension of the damped kernel" in html
    assert "interpolated (linearly in log L2)" in html


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_runs_from_the_compilation_cache_equal_a_cold_compilation(smoke, tmp_path):
    """The pipeline's jobs filled its cache; a run that reads its executables from there, and
    one compiled from scratch, both repeat the pipeline's record of that run exactly."""
    work, plan, _ = smoke
    cache = work / ".cache" / "jax"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) > 10, entries
    run_id = sorted(plan.runs)[0]
    spec = json.dumps(plan.runs[run_id])
    record = pd.read_csv(work / "results" / "runs" / run_id / "curve.csv")
    clean = {k: v for k, v in ENV.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                "JAX_PERSISTENT_CACHE"))}
    cached = {**clean, **plan.compilation_cache_env(), "JAX_COMPILATION_CACHE_DIR": str(cache)}
    for name, env in (("cold", clean), ("cached", cached)):
        subprocess.run([sys.executable, "-m", "pinn_ng.cli", "run", "--no-progress", "--spec",
                        spec, "--out", str(tmp_path / name)], cwd=work, env=env, check=True,
                       capture_output=True)
        curve = pd.read_csv(tmp_path / name / "curve.csv")
        for col in ("loss", "l2", "step_size"):
            assert curve[col].equals(record[col]), (name, col)  # NaN where NaN
    # the cached run found every executable: it wrote no new entry
    assert sorted(p.name for p in cache.iterdir()) == entries


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_figures_are_byte_identical_from_the_same_tables(smoke, tmp_path):
    work, plan, _ = smoke
    for fig in ("speedup", "convergence_poisson2d"):
        figures.draw(work / "results", fig, tmp_path / f"{fig}.png")
        assert (tmp_path / f"{fig}.png").read_bytes() == \
            (work / "figures" / f"{fig}.png").read_bytes()


@pytest.mark.slow  # the smoke preset end to end: -m slow (CI runs it)
def test_killed_run_leaves_no_record_and_rerun_completes(smoke):
    work, plan, _ = smoke
    runs_dir = work / "results" / "runs"
    victim = sorted(plan.runs)[0]
    shutil_rmtree(runs_dir / victim)
    # A pipeline killed during this run never got to gather or draw: remove what follows it.
    for product in ("curves.csv", "summary.csv", "experiments.csv"):
        (work / "results" / product).unlink()
    shutil_rmtree(work / "figures")
    mtimes = {p: p.stat().st_mtime_ns for p in runs_dir.glob("*/meta.json")}

    # The victim's job, with a budget long enough to be interrupted mid-way.
    spec = {**plan.runs[victim], "max_steps": 10**6}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinn_ng.cli", "run", "--no-progress", "--spec",
         json.dumps(spec), "--out", str(runs_dir / victim)],
        cwd=work, env=ENV, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until training has started
        if "compiled" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # what Snakemake and SLURM send
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not records.is_complete(runs_dir / victim)
    assert not (runs_dir / victim / "meta.json").exists()
    # nothing but the checkpoint that the rerun resumes from
    assert {p.name for p in (runs_dir / victim).glob("*")} <= {"checkpoint"}

    proc = snakemake(work, "-n", *PRESETS["smoke"])
    dry = proc.stdout + proc.stderr
    assert f"run_id={victim}" in dry
    assert re.search(r"^run\s+1\s*$", dry, re.M), dry  # only the victim is redone
    snakemake(work, *PRESETS["smoke"])
    assert records.is_complete(runs_dir / victim)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished ones untouched
    summary = pd.read_csv(work / "results" / "summary.csv")
    assert sorted(summary.run_id) == sorted([*plan.runs, *plan.tuned])


@pytest.mark.slow  # 30 s; the killed-run test above covers the same rerun logic for runs
def test_killed_search_reruns_only_its_missing_trials(smoke):
    """A search killed during stage 2 (its last trials have no record): Snakemake reruns those
    trials only, not the tables, and selects the same best (6-step budgets: deterministic)."""
    work, plan, _ = smoke
    tdir = work / "results" / "tuning" / "tunesmoke"
    before = (tdir / "best.json").read_text()
    tables = {p: p.stat().st_mtime_ns for p in tdir.glob("stage*/trials.csv")}
    victims = plan.studies["tunesmoke"].trial_ids(2)[-2:]
    for t in victims:
        shutil_rmtree(tdir / "stage2" / "runs" / t)
    # a search killed during stage 2 never got to select or draw: remove what follows it
    for product in ("best.json", "best.md", "results.csv"):
        (tdir / product).unlink()
    for fig in plan.tuning_figures:
        (work / "figures" / f"{fig}.png").unlink()
    kept = {p: p.stat().st_mtime_ns for p in tdir.glob("stage*/runs/*/meta.json")}
    proc = snakemake(work, "tune", "-n", *PRESETS["smoke"])  # a target before --configfile
    dry = proc.stdout + proc.stderr
    assert re.search(r"^tune_trial\s+2\s*$", dry, re.M), dry
    assert re.search(r"^tune_select\s+1\s*$", dry, re.M), dry
    assert not re.search(r"^tune_trials\s", dry, re.M), dry
    assert all(f"trial={t}" in dry for t in victims)
    snakemake(work, "tune", *PRESETS["smoke"])
    assert (tdir / "best.json").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in tables} == tables
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def shutil_rmtree(path):
    import shutil

    shutil.rmtree(path)
