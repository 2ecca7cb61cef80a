"""Scoring as a benchmark: final parameters on disk, targets, time to target, performance
profiles, the leaderboard and the solution figure."""

from collections import namedtuple

import numpy as np
import pytest

from pinn_ng.pipeline import params_io


def _tree(rng):
    return {"layers": [(rng.standard_normal((3, 4)), rng.standard_normal(4)),
                       (rng.standard_normal((4, 1)), rng.standard_normal(1))],
            "scale": np.float64(rng.standard_normal()), "empty": None,
            "head": {"w": rng.standard_normal((2, 2)).astype(np.float32)}}


def test_params_round_trip_exact(tmp_path):
    """Structure, dtypes and every float64 bit survive a save and a load."""
    import jax

    tree = _tree(np.random.default_rng(0))
    params_io.save(tmp_path / "p.npz", tree)
    back = params_io.load(tmp_path / "p.npz")
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(back)):
        assert np.asarray(a).dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), b)
    with np.load(tmp_path / "p.npz") as f:  # named by the key paths
        assert "['layers'][0][1]" in f.files


def test_params_other_nodes_need_like(tmp_path):
    """A namedtuple is stored; loading it needs a pytree of the same structure."""
    Layer = namedtuple("Layer", "w b")
    rng = np.random.default_rng(1)
    tree = [Layer(rng.standard_normal((2, 3)), rng.standard_normal(3))]
    params_io.save(tmp_path / "p.npz", tree)
    with pytest.raises(params_io.ParamsError, match="like="):
        params_io.load(tmp_path / "p.npz")
    back = params_io.load(tmp_path / "p.npz", like=tree)
    assert isinstance(back[0], Layer)
    np.testing.assert_array_equal(back[0].w, tree[0].w)
    wrong = [Layer(np.zeros((3, 3)), np.zeros(3))]
    with pytest.raises(params_io.ParamsError, match="shape"):
        params_io.load(tmp_path / "p.npz", like=wrong)


# ------------------------------------------------------------------------- targets and times

import math  # noqa: E402

import pandas as pd  # noqa: E402

from pinn_ng.pipeline import scoring  # noqa: E402

INF = math.inf


def test_time_to_target_from_a_hand_made_curve():
    curve = pd.DataFrame({"step": [6, 0, 2, 4, 8], "time": [0.4, 0.0, 0.1, 0.25, 0.5],
                          "l2": [0.02, 1.0, 0.5, 0.009, np.nan],
                          "loss": [3.0, 9.0, 5.0, 2.0, 1.0]})
    assert scoring.time_to_target(curve, 1e-2) == (0.25, 4.0)  # first in step order
    assert scoring.time_to_target(curve, 0.5) == (0.1, 2.0)  # at the target counts
    assert scoring.time_to_target(curve, 1.0) == (0.0, 0.0)
    assert scoring.time_to_target(curve, 1e-3) == (INF, INF)  # NaN is never below
    assert scoring.time_to_target(curve, 1.5, "loss") == (0.5, 8.0)
    cols = scoring.run_columns(curve, {"targets": [0.5, 1e-2], "metric": "l2"})
    assert cols == {"target_metric": "l2", "seconds_to_5e-01": 0.1, "steps_to_5e-01": 2.0,
                    "seconds_to_1e-02": 0.25, "steps_to_1e-02": 4.0}
    assert scoring.target_text(2.11e-5) == "2.11e-05" and scoring.target_text(5.9e-3) == \
        "5.9e-03" and scoring.target_text(1e-3) == "1e-03"


def test_targets_paper_preset_derived_and_loss():
    rows = []
    for problem, l2 in (("poisson5d", 0.3), ("poisson2d", 0.37), ("nometric", np.nan)):
        for rid, start in (("a", 1.0), ("b", 3.0)):
            rows += [{"run_id": problem + rid, "problem": problem, "step": s, "l2": l2 * start,
                      "loss": 40.0 * start} for s in (0, 2)]
    curves = pd.DataFrame(rows)
    t = scoring.resolve_targets(curves)
    assert t["poisson5d"]["targets"] == sorted(scoring.PAPER_FINAL_L2["poisson5d"].values(),
                                               reverse=True)
    assert t["poisson5d"]["source"].startswith("paper: final L2 of SGD 0.0059")
    # median initial L2 0.74: 1, 2, 3 decades below -> nearest powers of ten
    assert t["poisson2d"]["targets"] == [1e-1, 1e-2, 1e-3]
    assert t["poisson2d"]["metric"] == "l2"
    # no error metric: the loss (median initial 80) is scored instead
    assert t["nometric"] == {"targets": [10.0, 1.0, 0.1], "metric": "loss",
                             "source": t["nometric"]["source"]}
    assert "loss 80" in t["nometric"]["source"]
    t = scoring.resolve_targets(curves, {"poisson5d": [1e-3, 1e-2], "poisson2d": []})
    assert t["poisson5d"]["targets"] == [1e-2, 1e-3] and t["poisson5d"]["source"] == "preset"
    assert t["poisson2d"]["targets"] == []


# ----------------------------------------------------------- profile and leaderboard by hand

def _table():
    """Two optimizers, two problems, two targets each (seconds; steps = 10 x seconds):

    ====================  =====  =====
    pair                  A      B
    ====================  =====  =====
    (p, 1e-2)             1      2
    (p, 1e-3)             4      inf
    (q, 1e-2)             30     3
    (q, 1e-3)             inf    inf
    ====================  =====  =====

    A's first time is the median of two replicates (0.5, 1.5); B's (q, 1e-3) of (7, inf).
    C reaches nothing; (p, 1e-1) is met at step 0 by everyone and is left out.
    """
    runs = [("A", "p", 0, [0, 0.5, 4]), ("A", "p", 1, [0, 1.5, 4]), ("B", "p", 0, [0, 2, INF]),
            ("A", "q", 0, [0, 30, INF]), ("B", "q", 0, [0, 3, 7]), ("B", "q", 1, [0, 3, INF]),
            ("C", "p", 0, [0, INF, INF]), ("C", "q", 0, [0, INF, INF])]
    rows = []
    for lab, prob, rep, (t1, t2, t3) in runs:
        row = {"run_id": f"{prob}_{lab}_{rep}", "problem": prob, "label": lab,
               "display": f"opt {lab}", "final_l2": {"A": 1e-3, "B": 2e-3, "C": 0.5}[lab]
               * (1 + rep), "target_metric": "l2"}
        for t, v in ((1e-1, t1), (1e-2, t2), (1e-3, t3)):
            row[scoring.seconds_column(t)], row[scoring.steps_column(t)] = v, 10 * v
        rows.append(row)
    return pd.DataFrame(rows)


def test_profile_of_a_hand_made_table():
    times = scoring.pair_times(_table())
    assert list(times.index) == [(p, t) for p in "pq" for t in (1e-3, 1e-2, 1e-1)]
    assert times.loc[("p", 1e-2), "A"] == 1.0  # median of 0.5 and 1.5
    assert times.loc[("q", 1e-3), "B"] == INF  # median of 7 and inf
    r = scoring.ratios(times)
    assert list(r.index) == [(p, t) for p in "pq" for t in (1e-3, 1e-2)]  # step-0 pairs gone
    np.testing.assert_array_equal(r["A"].to_numpy(), [1, 1, INF, 10])
    np.testing.assert_array_equal(r["B"].to_numpy(), [INF, 2, INF, 1])
    np.testing.assert_array_equal(r["C"].to_numpy(), [INF] * 4)
    rho = scoring.profile(r, [1, 2, 10, 100])
    np.testing.assert_array_equal(rho["A"], [0.5, 0.5, 0.75, 0.75])
    np.testing.assert_array_equal(rho["B"], [0.25, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(rho["C"], [0, 0, 0, 0])
    area = scoring.profile_area(r, 100.0)
    assert area["A"] == pytest.approx((1 + 1 + 0.5) / 4, rel=1e-14)
    assert area["B"] == pytest.approx((1 - math.log(2) / math.log(100) + 1) / 4, rel=1e-14)
    assert area["C"] == 0.0
    # steps are 10 x seconds: the same ratios
    pd.testing.assert_frame_equal(scoring.ratios(scoring.pair_times(_table(), "steps")), r)


def test_leaderboard_ranks_by_profile_area():
    table = _table()
    board = scoring.leaderboard(table)
    assert list(board.label) == ["A", "B", "C"] and list(board["rank"]) == [1, 2, 3]
    assert list(board.reached) == [3, 2, 0] and set(board.pairs) == {4}
    assert board.final_p[0] == pytest.approx(1.5e-3) and board.final_q[1] == pytest.approx(3e-3)
    exps = pd.DataFrame({"experiment": "convergence", "kind": "convergence",
                         "run_id": table.run_id})
    md = scoring.leaderboard_markdown(table, exps)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split(" | ")[1] for ln in lines] == ["opt A", "opt B", "opt C"]
    assert lines[0].startswith("| 1 | opt A | 0.625 | 0.625 | 3 / 4 | 1.50e-03 | 1.00e-03 |")
    assert "τ ∈ [1, 100]" in md
    # a run outside the convergence experiments is not scored
    md = scoring.leaderboard_markdown(table, exps.assign(kind="scaling"))
    assert "Nothing to rank" in md


# --------------------------------------------------------------- a real tiny run, end to end

def test_scores_and_solution_figure_from_a_real_run(tmp_path):
    """One 4-step Adam run: its final parameters reproduce its final L2; gather adds the
    preset's targets to summary.csv and writes leaderboard.md; the solution figure shows the
    saved net and u* on the slice, and the profile draws."""
    import json

    import jax

    from pinn_ng import models, problems
    from pinn_ng.pipeline import figures, gather, runner

    rid = "poisson2d_adam_r0"
    meta = runner.run({"problem": "poisson2d", "optimizer": "adam", "widths": [2, 6, 1],
                       "n_interior": 20, "n_boundary": 8, "max_steps": 4, "eval_every": 2},
                      tmp_path / "runs" / rid)
    init, apply = models.mlp([2, 6, 1])
    params = params_io.load(tmp_path / "runs" / rid / params_io.FILE)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        init(jax.random.PRNGKey(0)))
    prob = problems.get("poisson2d")
    assert prob.errors(apply, params)["l2"] == pytest.approx(meta["final"]["l2"], rel=1e-12)

    manifest = {"experiments": {"convergence": [rid]}, "targets": {"poisson2d": [1.0, 1e-9]}}
    gather.gather(tmp_path / "runs", tmp_path, manifest)
    summ = pd.read_csv(tmp_path / "summary.csv")
    assert summ.loc[0, "target_metric"] == "l2"
    assert (summ.loc[0, "seconds_to_1e+00"], summ.loc[0, "steps_to_1e+00"]) == (0.0, 0.0)
    assert summ.loc[0, "steps_to_1e-09"] == INF
    assert "| 1 | adam |" in (tmp_path / "leaderboard.md").read_text()

    tables = figures.load(tmp_path)
    assert {"performance_profile", "solution_poisson2d"} <= set(figures.available(tables))
    plt, sns = figures._setup()
    fig = figures.fig_solution(tables, plt, sns, figures._palette(tables), "poisson2d",
                               results_dir=tmp_path)
    u_ax, star_ax, err_ax = [ax for ax in fig.axes if ax.get_title()][:3]
    pts, _, names, _ = figures._slice(prob)
    assert names == ["x1", "x2"]
    n = figures.SLICE_POINTS
    u = np.asarray(jax.vmap(lambda x: apply(params, x))(pts)).reshape(n, n)
    star = np.asarray(jax.vmap(prob.exact_fn)(pts)).reshape(n, n)
    np.testing.assert_allclose(u_ax.images[0].get_array(), u, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(star_ax.images[0].get_array(), star, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(err_ax.images[0].get_array(), np.abs(u - star), rtol=1e-10,
                               atol=1e-14)
    figures._save(fig, tmp_path / "solution.png", 60)
    figures.draw(tmp_path, "performance_profile", tmp_path / "profile.png", dpi=60)
    for name in ("solution", "profile"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "runs" / rid / "meta.json").read_text())["steps"] == 4


def test_solution_slice_through_the_domain():
    """The first two coordinates vary over the domain; the others sit at its centre, time at
    its end; a 1+1d problem's slice is (x, t)."""
    from pinn_ng import problems
    from pinn_ng.pipeline import figures

    pts, axes, names, fixed = figures._slice(problems.get("heat4d"), n=5)
    assert names == ["x1", "x2"] and fixed == "x3 = 0.5, x4 = 0.5, t = 1"
    np.testing.assert_array_equal(axes[0], [0, 0.25, 0.5, 0.75, 1])
    assert pts.shape == (25, 5) and (pts[:, 2:] == [0.5, 0.5, 1.0]).all()
    assert sorted(set(pts[:, 0])) == sorted(set(pts[:, 1])) == [0, 0.25, 0.5, 0.75, 1]
    pts, axes, names, fixed = figures._slice(problems.get("logfp9d"), n=3)
    assert (axes[0] == [-5, 0, 5]).all() and fixed.endswith("x9 = 0, t = 1")
    one_d = problems.Problem(
        name="wave1d", description="", input_dim=2, widths=(2, 4, 1), n_interior=4,
        n_boundary=2, exact_fn=lambda x: x[0], interior_jet_fn=lambda v, g, lap, x: lap,
        sample_interior_fn=problems.get("poisson2d").sample_interior_fn,
        sample_boundary_fn=problems.get("poisson2d").sample_boundary_fn, time_dependent=True)
    assert figures._slice(one_d, n=3)[2:] == (["x1", "t"], "")


def test_leaderboard_ties_share_a_rank():
    table = _table()
    table = pd.concat([table, table[table.label == "C"].assign(
        label="D", display="opt D", run_id=lambda d: d.run_id + "_d")])
    board = scoring.leaderboard(table)
    assert list(zip(board["rank"], board.label)) == [(1, "A"), (2, "B"), (3, "C"), (3, "D")]


def test_leaderboard_says_not_run_where_an_optimizer_has_no_run():
    table = _table()
    only_p = table[table.label == "C"].iloc[:1]
    table = pd.concat([table, only_p.assign(label="E", display="opt E",
                                            run_id=lambda d: d.run_id + "_e")])
    exps = pd.DataFrame({"experiment": "convergence", "kind": "convergence",
                         "run_id": table.run_id})
    line = [ln for ln in scoring.leaderboard_markdown(table, exps).splitlines()
            if "| opt E |" in ln][0]
    assert line.count("not run") == 1 and "diverged" not in line
