"""A problem of your own, registered by name: Poisson 3d with an exponential solution.

    PINN_NG_PLUGINS=examples/my_problem.py pinn-ng problems
    PINN_NG_PLUGINS=examples/my_problem.py pinn-ng run --problem poisson3d_exp \\
        --optimizer engd_woodbury --hparam damping=1e-8 --max-steps 20 --out runs/mine

−Δu = f on (0,1)³ with u* = exp(−(x₁ + x₂ + x₃)), so Δu* = 3u* and f = −3u*; u = u* on the
boundary.  The factory is called whenever the problem is needed.
"""

import jax
import jax.numpy as jnp

from pinn_ng import problems


def exact(x):
    return jnp.exp(-jnp.sum(x))


def interior(value, grad, lap, x):  # (L u)(x) − f(x) from u, ∇u, Δu at one point
    return -lap - (-3.0 * exact(x))


def sample_boundary(key, n, dtype):  # a uniform point with one coordinate set to 0 or 1
    k_x, k_face, k_side = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (n, 3), dtype=dtype)
    face = jax.nn.one_hot(jax.random.randint(k_face, (n,), 0, 3), 3, dtype=bool)
    side = jax.random.bernoulli(k_side, 0.5, (n, 1)).astype(dtype)
    return jnp.where(face, side, x)


@problems.register("poisson3d_exp")
def poisson3d_exp():
    return problems.Problem(
        name="poisson3d_exp", description="Poisson 3d, u* = exp(-sum x_i) on [0,1]^3",
        input_dim=3, widths=(3, 32, 32, 1), n_interior=500, n_boundary=200,
        exact_fn=exact, interior_jet_fn=interior,
        sample_interior_fn=lambda key, n, dtype: jax.random.uniform(key, (n, 3), dtype=dtype),
        sample_boundary_fn=sample_boundary,
    )
