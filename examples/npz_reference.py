"""A problem without an exact solution, scored against a ``.npz`` reference: ``poisson_box``.

    PINN_NG_PLUGINS=examples/npz_reference.py pinn-ng run --problem poisson_box \\
        --optimizer engd_woodbury --hparam damping=1e-8 --max-steps 20 --out runs/box

−Δu = 1 on (0,1)², u = 0 on the boundary (the torsion problem).  No closed form: the errors
are measured on the points ``x`` of ``data/poisson_box.npz`` against its values ``u``, a
Fourier sine series written by ``data/make_poisson_box.py``.
"""

from pathlib import Path

import jax.numpy as jnp

from pinn_ng import problems

REFERENCE = Path(__file__).resolve().parent / "data" / "poisson_box.npz"


@problems.register("poisson_box")
def poisson_box():
    return problems.Problem(
        name="poisson_box", description="Poisson 2d, -Laplace u = 1, u = 0 (reference .npz)",
        input_dim=2, widths=(2, 32, 32, 1), n_interior=900, n_boundary=120,
        interior_jet_fn=lambda value, grad, lap, x: -lap - 1.0,
        boundary_jet_fn=lambda value, grad, x: value,  # u = 0: no exact solution needed
        reference_path=str(REFERENCE),
        sample_interior_fn=problems.uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=problems.box_boundary_sampler([0, 0], [1, 1]),
    )
