"""What a figure's text claims about its curves: the Nyström panel's verdict on the sketch."""

import numpy as np
import pandas as pd

from pinn_ng.pipeline import figures


def _curves(runs):
    """runs: {run_id: (solver, [(time, l2), ...])} -> the rows a panel reads."""
    return pd.DataFrame([{"run_id": rid, "solver": solver, "time": t, "l2": e}
                         for rid, (solver, pts) in runs.items() for t, e in pts])


def _ahead(runs):
    out = figures.nystrom_ahead(_curves(runs))
    return None if out is None else out.tolist()


EXACT = ("cholesky", [(0.0, 1.0), (2.0, 0.5), (4.0, 0.1), (6.0, 0.01)])


def test_sketch_ahead_early_then_behind():
    sketch = ("nystrom_gpu", [(0.0, 1.0), (1.0, 0.3), (2.5, 0.2), (3.0, 0.3), (5.0, 0.2)])
    assert _ahead({"e": EXACT, "s": sketch}) == [1.0, 2.5]
    assert figures._verdict(np.array([1.0, 2.5])) == (
        "\nthe sketch beats the exact kernel at equal time first at t ≈ 1 s, last at t ≈ 2.5 s")
    assert figures._verdict(np.array([3.0])).endswith("at equal time at t ≈ 3 s")


def test_sketch_never_ahead_is_empty_and_missing_kinds_are_none():
    behind = ("nystrom", [(0.0, 1.0), (1.0, 0.9), (3.0, 0.6), (7.0, 0.2)])
    assert _ahead({"e": EXACT, "s": behind}) == []
    assert figures._verdict(np.array([])) == (
        "\nthe sketch never beats the exact kernel at equal time at this size")
    assert _ahead({"s": behind}) is None and _ahead({"e": EXACT}) is None
    assert figures._verdict(None) == ""


def test_the_exact_error_between_evaluations_is_the_drawn_line_not_the_last_point():
    # At t = 3 the exact run's last evaluation (t = 2) is 0.5, but its drawn line (log-linear to
    # 0.1 at t = 4) is at sqrt(0.05) ~ 0.224: a sketch at 0.3 is behind, one at 0.2 ahead.
    at_three = float(np.sqrt(0.5 * 0.1))
    assert _ahead({"e": EXACT, "s": ("nystrom", [(0.0, 1.0), (3.0, 0.3)])}) == []
    assert _ahead({"e": EXACT, "s": ("nystrom", [(0.0, 1.0), (3.0, 0.2)])}) == [3.0]
    # the margin: within LEAD_FRACTION of the exact error is not ahead
    close = at_three * (figures.LEAD_FRACTION + 0.01)
    assert _ahead({"e": EXACT, "s": ("nystrom", [(0.0, 1.0), (3.0, close)])}) == []


def test_the_sketch_must_beat_every_exact_run_and_past_their_end_their_last_error():
    other = ("cholesky", [(0.0, 1.0), (1.0, 0.05)])  # a second exact seed, fast
    sketch = ("nystrom", [(0.0, 1.0), (1.5, 0.2), (9.0, 0.005)])
    # at 1.5 the first exact run is at ~0.59 but the second already at 0.05; at 9.0 both
    # have ended (0.01 and 0.05 held), and 0.005 beats them
    assert _ahead({"e": EXACT, "f": other, "s": sketch}) == [9.0]
    # an exact run without a solver column value (e.g. not ENGD-W) still counts as exact
    rows = _curves({"e": EXACT, "s": sketch})
    rows["solver"] = rows.solver.where(rows.run_id == "s", None)
    assert figures.nystrom_ahead(rows).tolist() == [1.5, 9.0]
