"""The paper authors' logged runs next to ours: step alignment, interpolation, the equal-step
table of ``pinn-ng compare``, its explanations, and the overlay figure."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pinn_ng.pipeline import compare, figures, paper_curves

RUNS_HEADER = ("file,experiment,run,optimizer,equation,dim_Omega,model,N_Omega,N_dOmega,"
               "line_search,steps_logged,command\n")


def _paper_dir(path, explanation=None):
    """Three histories.  ENGD-W on Poisson 5d: rows k = 0…9 hold 1/(k + 1) (our step s -> 1/s),
    then 1e-2 at k = 24, 1e-4 at k = 99, 1e-5 at k = 999; SPRING on Poisson 5d, rows 0…19; SPRING
    on heat in 10 dimensions."""
    path.mkdir()
    (path / "runs.csv").write_text(
        RUNS_HEADER
        + "w.csv,exp1,runw,ENGD-W,poisson,5,mlp-tanh-64-64-48-48,3000,500,True,13,python x\n"
        + "s.csv,exp1,runs,SPRING,poisson,5,mlp-tanh-64-64-48-48,3000,500,True,20,python x\n"
        + "h.csv,exp14,runh,SPRING,heat,10,mlp-tanh-256-256-128-128,3000,500,True,2,python x\n")
    steps = list(range(10)) + [24, 99, 999]
    l2 = [1 / (k + 1) for k in range(10)] + [1e-2, 1e-4, 1e-5]
    pd.DataFrame({"step": steps, "time": np.arange(13.0), "l2_error": l2, "loss": l2}).to_csv(
        path / "w.csv", index=False)
    pd.DataFrame({"step": range(20), "time": np.arange(20.0), "l2_error": 0.5,
                  "loss": 1.0}).to_csv(path / "s.csv", index=False)
    pd.DataFrame({"step": [0, 1], "time": [1.0, 2.0], "l2_error": [1.0, 0.9],
                  "loss": 1.0}).to_csv(path / "h.csv", index=False)
    if explanation:
        (path / "explanations.yaml").write_text(f'poisson5d:\n  engd_w: "{explanation}"\n')
    return path


#: Our ENGD-W run: its L2 at the steps the table compares (every 5 steps evaluated, last 133).
OURS_ENGD_W = {10: 0.2, 25: 5e-2, 50: 1e-3, 100: 1e-5, 133: 2e-5}


def _results(path):
    """Tables of three convergence runs on Poisson 5d: ENGD-W (steps 0, 5, …, 130, 133),
    SPRING at the text's μ (steps 0, 10, 20, 30) and KFAC (no paper history)."""
    path.mkdir()
    runs = {"r_w": ("engd_w", "ENGD-W", list(range(0, 131, 5)) + [133]),
            "r_s": ("spring_mu_text", "SPRING (μ text)", [0, 10, 20, 30]),
            "r_k": ("kfac", "KFAC", [0, 10, 20])}
    summary, curves = [], []
    for run_id, (label, display, steps) in runs.items():
        summary.append({"run_id": run_id, "problem": "poisson5d", "label": label,
                        "display": display, "optimizer": label, "solver": "", "N": 3500,
                        "P": 10065, "replicate": 0, "steps": steps[-1], "seconds": 60.0,
                        "seconds_per_step": 60.0 / steps[-1], "median_seconds_per_step": 0.4,
                        "final_l2": 1e-3, "best_l2": 1e-3, "reason": ""})
        for s in steps:
            l2 = OURS_ENGD_W.get(s, 0.3 / (s + 1)) if label == "engd_w" else 0.25
            curves.append({"run_id": run_id, "problem": "poisson5d", "label": label,
                           "display": display, "N": 3500, "P": 10065, "solver": "",
                           "step": s, "time": s * 0.4, "l2": l2})
    pd.DataFrame(summary).to_csv(path / "summary.csv", index=False)
    pd.DataFrame(curves).to_csv(path / "curves.csv", index=False)
    pd.DataFrame([{"experiment": "convergence", "kind": "convergence", "run_id": r}
                  for r in runs]).to_csv(path / "experiments.csv", index=False)
    return path


def test_index_maps_histories_to_our_problems_and_labels(tmp_path):
    index = paper_curves.load_index(_paper_dir(tmp_path / "paper"))
    assert list(zip(index.file, index.problem, index.label)) == [
        ("w.csv", "poisson5d", "engd_w"), ("s.csv", "poisson5d", "spring"),
        ("h.csv", "heat10d", "spring")]  # the heat run's dim_Omega decides, not its name
    assert paper_curves.find(index, "poisson5d", "spring_mu_text").file == "s.csv"
    assert paper_curves.find(index, "heat4d", "spring") is None
    for label in ("engd_w_fixed", "spring_fixed", "kfac"):  # other methods: no history
        assert paper_curves.find(index, "poisson5d", label) is None


def test_our_step_s_is_the_logged_row_s_minus_1_and_interpolation_is_log_log(tmp_path):
    index = paper_curves.load_index(_paper_dir(tmp_path / "paper"))
    hist = paper_curves.load_history(paper_curves.find(index, "poisson5d", "engd_w"))
    at = paper_curves.l2_at(hist, [0, 1, 5, 10, 25, 50, 100, 133, 1000, 1001])
    assert at.paper_at.tolist() == ["before the log", "logged", "logged", "logged", "logged",
                                    "interpolated", "logged", "interpolated", "logged",
                                    "after the log"]
    # logged row k is after k + 1 updates: our step 5 is row 4 (1/5), not row 5 (1/6)
    assert at.paper_l2[1:5].tolist() == [1.0, 0.2, 0.1, 1e-2]
    # between rows 24 (1e-2) and 99 (1e-4), halfway in log step: 1e-3 (linear would give 6.7e-3)
    assert at.paper_l2[5] == pytest.approx(1e-3, rel=1e-12)
    assert at.paper_l2[7] == pytest.approx(1e-4 * 10 ** -math.log10(1.33), rel=1e-12)
    assert at.paper_l2[8] == 1e-5
    assert math.isnan(at.paper_l2[0]) and math.isnan(at.paper_l2[9])


def test_the_shipped_histories():
    index = paper_curves.load_index()
    assert len(index) == 14
    assert sorted(set(index.problem)) == ["heat10d", "heat4d", "logfp9d", "poisson100d",
                                          "poisson10d", "poisson5d"]
    assert sorted(index.label[index.problem == "poisson5d"]) == [
        "adam", "engd", "engd_w", "hessian_free", "sgd", "spring"]
    assert paper_curves.find(index, "heat10d", "spring").run == "qq3uvvai"
    hist = paper_curves.load_history(paper_curves.find(index, "poisson5d", "engd_w"))
    at = paper_curves.l2_at(hist, [5510, 5511])  # logged step 5509: the paper's 5509 steps
    assert at.paper_l2[0] == 6.809612004279309e-07 and at.paper_at[1] == "after the log"
    expl = paper_curves.explanations()  # written by people, keyed by problem and label
    assert set(expl) <= set(index.problem) and "mlp_torch" in expl["poisson5d"]["engd_w"]


def test_malformed_histories_are_one_clear_error(tmp_path):
    with pytest.raises(paper_curves.PaperDataError, match="no directory .*--paper-dir"):
        paper_curves.load_index(tmp_path / "nowhere")
    d = _paper_dir(tmp_path / "paper")
    (d / "runs.csv").write_text("file,run,optimizer\nw.csv,runw,ENGD-W\n")
    with pytest.raises(paper_curves.PaperDataError, match=r"lacks the columns \['equation'"):
        paper_curves.load_index(d)
    d = _paper_dir(tmp_path / "paper2")
    pd.DataFrame({"step": [0, 2, 1], "l2_error": [1.0, 0.5, 0.4]}).to_csv(d / "w.csv")
    entry = paper_curves.find(paper_curves.load_index(d), "poisson5d", "engd_w")
    with pytest.raises(paper_curves.PaperDataError, match="w.csv: 'step' must be"):
        paper_curves.load_history(entry)
    (d / "explanations.yaml").write_text("poisson5d: [engd_w]\n")
    with pytest.raises(paper_curves.PaperDataError, match="expected a mapping"):
        paper_curves.explanations(d)


def test_milestones():
    assert compare.milestones(9) == []
    assert compare.milestones(133) == [10, 25, 50, 100]
    assert compare.milestones(5000) == [10, 25, 50, 100, 250, 500, 1000, 2500, 5000]


def test_equal_step_table_ratios_and_flags(tmp_path):
    table = compare.equal_steps(_results(tmp_path / "res"), _paper_dir(tmp_path / "paper"))
    assert table.columns.tolist() == compare.EQUAL_STEPS_COLUMNS
    w = table[table.label == "engd_w"]
    assert w.step.tolist() == [10, 25, 50, 100, 133]
    assert w["at"].tolist() == ["milestone"] * 4 + ["last"]
    assert w.ours_l2.tolist() == [0.2, 5e-2, 1e-3, 1e-5, 2e-5]
    # the last: log-log between our steps 100 (1e-4) and 1000 (1e-5)
    np.testing.assert_allclose(w.paper_l2, [0.1, 1e-2, 1e-3, 1e-4, 1e-4 / 1.33], rtol=1e-12)
    np.testing.assert_allclose(w.ratio[:4], [2.0, 5.0, 1.0, 0.1], rtol=1e-12)
    assert w.outside_3x.tolist() == [False, True, False, True, True]
    assert w.paper_at.tolist() == ["logged", "logged", "interpolated", "logged",
                                   "interpolated"]
    # SPRING at the text's μ reads SPRING's history, logged to our step 20: step 30 has none
    s = table[table.label == "spring_mu_text"]
    assert s.step.tolist() == [10, 30] and s.paper_file.tolist() == ["s.csv"] * 2
    assert s.ratio.iloc[0] == 0.5 and math.isnan(s.ratio.iloc[1])
    assert s.paper_at.iloc[1] == "after the log" and not s.outside_3x.iloc[1]
    assert "kfac" not in set(table.label)


def test_equal_step_markdown_says_whether_a_flag_is_explained(tmp_path):
    res = _results(tmp_path / "res")
    plain = _paper_dir(tmp_path / "paper")
    text = compare.equal_steps_markdown(compare.equal_steps(res, plain), plain)
    assert text.count("outside 3×, not explained") == 3 and "Explanation:" not in text
    assert "| 25 | 5.00e-02 | 1.00e-02 | logged | 5 | outside 3×, not explained |" in text
    assert "| 30 (our last) | 2.50e-01 | – | after the log | – |  |" in text
    explained = _paper_dir(tmp_path / "paper2", explanation="our batches differ")
    text = compare.equal_steps_markdown(compare.equal_steps(res, explained), explained)
    assert "not explained" not in text and text.count("outside 3× (explained below)") == 3
    engd_w = text.split("### ENGD-W")[1].split("###")[0]
    assert engd_w.rstrip().endswith("Explanation: our batches differ")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pinn_ng.cli", *args], capture_output=True,
                          text=True)


def test_compare_cli_writes_both_tables_and_refuses_a_wrong_paper_dir(tmp_path):
    res, paper = _results(tmp_path / "res"), _paper_dir(tmp_path / "paper")
    proc = _cli("compare", "--results", str(res), "--paper-dir", str(paper))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(res / f) for f in (
        "paper_comparison.md", "paper_equal_steps.csv", "paper_equal_steps.md")]
    csv = pd.read_csv(res / "paper_equal_steps.csv")
    assert csv.label.tolist() == ["engd_w"] * 5 + ["spring_mu_text"] * 2
    assert csv.step.tolist() == [10, 25, 50, 100, 133, 10, 30]
    assert (res / "paper_equal_steps.md").read_text().startswith("# Our L2 error next to")

    other = _results(tmp_path / "res2")
    proc = _cli("compare", "--results", str(other), "--paper-dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "--paper-dir" in proc.stderr
    assert not list(other.glob("paper_*"))  # nothing half written


def test_overlay_figure_from_a_synthetic_table(tmp_path):
    res, paper = _results(tmp_path / "res"), _paper_dir(tmp_path / "paper")
    tables = figures.load(res)
    assert figures.available(tables, paper) == ["convergence_poisson5d",
                                                "performance_profile", "solution_poisson5d",
                                                "paper_overlay_poisson5d"]
    plt, sns = figures._setup()
    palette = figures._palette(tables)
    fig = figures.fig_paper_overlay(tables, plt, sns, palette, "poisson5d", paper_dir=paper)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["ENGD-W", "SPRING (μ text)"]
    w = panels[0]
    lines = {line.get_label(): line for line in w.get_lines()}
    assert lines["paper"].get_xdata().tolist() == list(range(1, 11)) + [25, 100, 1000]
    assert lines["paper"].get_color() == "0.5"
    assert lines["ours"].get_xdata()[0] == 5  # step 0 has no place on a log axis
    assert lines["ours"].get_color() == palette["ENGD-W"]
    assert lines["our last step"].get_xdata().tolist() == [133]
    assert w.get_xscale() == w.get_yscale() == "log"
    ratio = 2e-5 / paper_curves.l2_at(paper_curves.load_history(paper_curves.find(
        paper_curves.load_index(paper), "poisson5d", "engd_w")), [133]).paper_l2[0]
    assert w.texts[0].get_text() == f"at our last step 133:\nours / paper = {ratio:.2g}"
    plt.close(fig)
    out = figures.draw(res, "paper_overlay_poisson5d", tmp_path / "o.png", paper_dir=paper)
    assert (tmp_path / "o.png").stat().st_size > 10_000 and out.endswith("o.png")


def test_overlay_needs_the_histories_only_where_given(tmp_path, monkeypatch):
    tables = figures.load(_results(tmp_path / "res"))
    with pytest.raises(paper_curves.PaperDataError):
        figures.available(tables, tmp_path / "nowhere")
    monkeypatch.setattr(paper_curves, "DEFAULT_DIR", tmp_path / "nowhere")
    assert figures.available(tables) == ["convergence_poisson5d", "performance_profile",
                                         "solution_poisson5d"]
