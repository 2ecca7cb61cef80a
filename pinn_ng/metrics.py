"""Error metrics of the paper."""

from __future__ import annotations

import jax.numpy as jnp


def rms_l2(pred, exact):
    """RMS error sqrt(mean((u_theta - u*)^2)) over an evaluation set (the paper's "L2 error")."""
    return jnp.sqrt(jnp.mean((pred - exact) ** 2))


def relative_l2(pred, exact):
    """||u_theta - u*||_2 / ||u*||_2 over the evaluation set."""
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)
