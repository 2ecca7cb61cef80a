"""Poisson 2d with a Robin side, registered as ``poisson_robin``.

    PINN_NG_PLUGINS=examples/poisson_robin.py pinn-ng run --problem poisson_robin \\
        --optimizer engd_woodbury --hparam damping=1e-8 --max-steps 20 --out runs/robin

−Δu = (π² − 1) u* on (0,1)² with u* = eˣ sin(πy).  At x = 0 the Robin condition
∂u/∂n + u = 0 (outward normal −x: −u_x + u = 0, which u* meets); u = u* on the other sides.
"""

import jax.numpy as jnp

from pinn_ng import problems


def exact(x):
    return jnp.exp(x[0]) * jnp.sin(jnp.pi * x[1])


def boundary(value, grad, x):  # the sampler puts the x = 0 side at exactly 0.0
    return jnp.where(x[0] == 0.0, -grad[0] + value, value - exact(x))


@problems.register("poisson_robin")
def poisson_robin():
    return problems.Problem(
        name="poisson_robin", description="Poisson 2d, Robin at x = 0, u* = exp(x) sin(pi y)",
        input_dim=2, widths=(2, 32, 32, 1), n_interior=900, n_boundary=120, exact_fn=exact,
        interior_jet_fn=lambda value, grad, lap, x: -lap - (jnp.pi**2 - 1) * exact(x),
        boundary_jet_fn=boundary,
        sample_interior_fn=problems.uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=problems.box_boundary_sampler([0, 0], [1, 1]),
    )
