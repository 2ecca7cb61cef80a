"""Helmholtz 2d with Dirichlet data, registered as ``helmholtz2d``.

    PINN_NG_PLUGINS=examples/helmholtz2d.py pinn-ng run --problem helmholtz2d \\
        --optimizer engd_woodbury --hparam damping=1e-8 --max-steps 20 --out runs/helmholtz

−Δu − k²u = f on (0,1)² with k = 2 and u* = sin(πx) sin(2πy), so f = (5π² − k²) u*;
u = u* on the boundary (the default: no boundary_jet_fn).
"""

import jax.numpy as jnp

from pinn_ng import problems

K = 2.0


def exact(x):
    return jnp.sin(jnp.pi * x[0]) * jnp.sin(2 * jnp.pi * x[1])


def interior(value, grad, lap, x):  # (L u)(x) − f(x) from u, ∇u, Δu at one point
    return -lap - K**2 * value - (5 * jnp.pi**2 - K**2) * exact(x)


@problems.register("helmholtz2d")
def helmholtz2d():
    return problems.Problem(
        name="helmholtz2d", description="Helmholtz 2d, k = 2, u* = sin(pi x) sin(2 pi y)",
        input_dim=2, widths=(2, 32, 32, 1), n_interior=900, n_boundary=120,
        exact_fn=exact, interior_jet_fn=interior,
        sample_interior_fn=problems.uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=problems.box_boundary_sampler([0, 0], [1, 1]),
    )
