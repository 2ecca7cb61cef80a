"""Writes poisson_box.npz, the reference of examples/npz_reference.py (deterministic).

−Δu = 1 on (0,1)², u = 0 on the boundary has the Fourier sine series
u(x, y) = Σ_{m, n odd} 16 / (π⁴ m n (m² + n²)) sin(mπx) sin(nπy).  Terms up to m, n < 400
leave a truncation error below 1e-7, far below the errors a PINN reaches here.  The points
are a 24 × 24 grid of cell centres.

    python examples/data/make_poisson_box.py
"""

from pathlib import Path

import numpy as np


def series(x, y, terms=400):
    k = np.arange(1, terms, 2, dtype=np.float64)
    coef = 16.0 / (np.pi**4 * k[:, None] * k[None, :] * (k[:, None] ** 2 + k[None, :] ** 2))
    sx, sy = np.sin(np.pi * np.outer(x, k)), np.sin(np.pi * np.outer(y, k))
    return np.einsum("pm,mn,pn->p", sx, coef, sy)


if __name__ == "__main__":
    g = (np.arange(24) + 0.5) / 24
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    np.savez(Path(__file__).with_name("poisson_box.npz"), x=pts, u=series(pts[:, 0], pts[:, 1]))
