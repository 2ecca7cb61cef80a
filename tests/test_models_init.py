"""Initialisation schemes of the tanh MLP: the default Glorot-normal and the authors' PyTorch
default (``init="torch"``, network ``mlp_torch``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pinn_ng import models


def test_torch_init_is_uniform_in_one_over_sqrt_fan_in():
    init, apply = models.make("mlp_torch", (5, 400, 300, 1), "float64")
    params = init(jax.random.PRNGKey(3))
    for (w, b), fan_in in zip(params, (5, 400, 300)):
        bound = 1.0 / np.sqrt(fan_in)
        for leaf in (np.asarray(w), np.asarray(b)):
            assert leaf.dtype == np.float64
            assert np.all(np.abs(leaf) <= bound)
            if leaf.size >= 100:  # the range is filled
                assert np.max(np.abs(leaf)) > 0.95 * bound
        # U(−a, a) has variance a²/3: the 120,000 weights of the middle layer pin it to ~1 %
    w = np.asarray(params[1][0])
    assert np.var(w) == pytest.approx((1.0 / 400) / 3, rel=0.03)
    assert abs(np.mean(w)) < 0.01 / np.sqrt(400)
    # biases are random too (PyTorch), unlike the default's zeros
    assert np.std(np.asarray(params[1][1])) > 0
    # the structured forward-Laplacian path recognises it as a tanh MLP
    assert apply.tanh_mlp_widths == (5, 400, 300, 1)


def test_default_init_is_unchanged_glorot_normal_with_zero_biases():
    init, _ = models.mlp((4, 50, 1), "float64")
    params = init(jax.random.PRNGKey(7))
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    for k, (w, b), (fan_in, fan_out) in zip(keys, params, ((4, 50), (50, 1))):
        expected = np.sqrt(2.0 / (fan_in + fan_out)) * np.asarray(
            jax.random.normal(k, (fan_in, fan_out), dtype=jnp.float64))
        np.testing.assert_array_equal(np.asarray(w), expected)
        assert not np.any(np.asarray(b))


def test_unknown_init_is_a_clear_error():
    match = r"unknown initialisation 'xavier'; valid: \['glorot_normal', 'torch'\]"
    with pytest.raises(ValueError, match=match):
        models.mlp((2, 4, 1), "float64", init="xavier")
