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
