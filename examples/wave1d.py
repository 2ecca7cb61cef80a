"""The 1+1d wave equation with an initial value and an initial velocity, as ``wave1d``.

    PINN_NG_PLUGINS=examples/wave1d.py pinn-ng run --problem wave1d \\
        --optimizer engd_woodbury --hparam damping=1e-8 --max-steps 20 --out runs/wave

u_tt − u_xx = 0 on (0,1) × (0,1), inputs (x, t): the operator Σᵢ aᵢ ∂ᵢᵢu with a = (−1, 1).
u* = sin(πx) (cos(πt) + sin(πt)/π): u(x, 0) = sin(πx), u_t(x, 0) = sin(πx), u = 0 at x = 0, 1.
Two residuals per boundary point, u − u* and u_t − u*_t: the initial value and velocity at
t = 0, the Dirichlet data and their time derivative (zero) on the sides.
"""

import jax
import jax.numpy as jnp

from pinn_ng import problems


def exact(x):
    return jnp.sin(jnp.pi * x[0]) * (jnp.cos(jnp.pi * x[1]) + jnp.sin(jnp.pi * x[1]) / jnp.pi)


def boundary(value, grad, x):  # grad = (u_x, u_t)
    return jnp.stack([value - exact(x), grad[1] - jax.grad(exact)(x)[1]])


def sample_boundary(key, n, dtype):  # the first half at t = 0, the rest at x = 0 or 1
    k_x, k_t, k_side = jax.random.split(key, 3)
    x, t = jax.random.uniform(k_x, (n,), dtype), jax.random.uniform(k_t, (n,), dtype)
    side = jax.random.bernoulli(k_side, 0.5, (n,)).astype(dtype)
    initial = jnp.arange(n) < n // 2
    return jnp.stack([jnp.where(initial, x, side), jnp.where(initial, 0.0, t)], axis=1)


@problems.register("wave1d")
def wave1d():
    return problems.Problem(
        name="wave1d", description="wave 1+1d, u(x,0) = u_t(x,0) = sin(pi x)", input_dim=2,
        widths=(2, 32, 32, 1), n_interior=900, n_boundary=200, exact_fn=exact,
        interior_jet_fn=lambda value, grad, lap, x: lap, operator_diag=(-1.0, 1.0),
        boundary_jet_fn=boundary, n_boundary_residuals=2, time_dependent=True,
        sample_interior_fn=problems.uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=sample_boundary,
    )
