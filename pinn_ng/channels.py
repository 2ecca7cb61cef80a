"""Forward-Laplacian channels of the tanh MLPs: value, first derivatives and Laplacian of a
whole batch in one structured pass, and the per-point Jacobian of any residual built on them.

For ``models.mlp`` networks (``apply.tanh_mlp_widths`` is set) the forward Laplacian needs no
general Taylor-mode machinery: every hidden state carries S = D + 2 *channels* per point — the
value h, its D first derivatives ∂_j h (one per input coordinate, time included) and its
Laplacian Δh over the ``lap_dims`` coordinates (the spatial ones) — held as one dense array
of shape (N, S, width):

- through a linear layer, one matmul over all channels, Z = H W, with the bias added to the
  value channel only;
- through tanh, closed forms: a = tanh(z), σ' = 1 − a², σ'' = −2aσ',
  ∂_j a = σ'·∂_j z and Δa = σ'·Δz + σ''·Σ_{j ∈ lap_dims} (∂_j z)².

The channels entering each layer (``H_l``, with a 1 appended for the bias on the value channel)
and the gradients of the per-point residuals with respect to each layer's output channels
(``G_l``, one reverse pass of the batch) give the rows of J exactly:
∂r_n/∂W_l = Σ_s H_l[n, s]ᵀ G_l[n, s] and ∂r_n/∂b_l = G_l[n, 0].  KFAC for PINNs builds its
Kronecker factors from the same channels (sums of H Hᵀ and G Gᵀ).

folx (:mod:`pinn_ng.operators`) stays the general path for any other ``apply``, and the
reference of the tests.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class Jet(NamedTuple):
    """Derivatives of the network at N points."""

    value: jax.Array  # (N,)
    grad: jax.Array  # (N, D): ∂u/∂x_j for every input coordinate (time last)
    laplacian: jax.Array  # (N,): Σ_{j ∈ lap_dims} ∂²u/∂x_j²


def tanh_mlp_widths(apply) -> tuple | None:
    """The layer widths if ``apply`` is a ``pinn_ng.models.mlp`` network, else None."""
    return getattr(apply, "tanh_mlp_widths", None)


def _input_channels(x, with_derivatives: bool):
    """Channels of the input layer: (N, S, D) with S = D + 2 (value, ∂_1..∂_D, Δ) or S = 1."""
    n, d = x.shape
    if not with_derivatives:
        return x[:, None, :]
    eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (n, d, d))
    zero = jnp.zeros((n, 1, d), x.dtype)
    return jnp.concatenate([x[:, None, :], eye, zero], axis=1)


def forward(params, x, lap_dims: Sequence[int] | None, perturb=None):
    """Propagate channels through the MLP ``params`` at points ``x`` (N, D).

    ``lap_dims=None``: the value channel only (S = 1, e.g. boundary points).  Otherwise S = D + 2
    channels, the Laplacian over ``lap_dims``.  ``perturb`` (optional): one array per layer,
    shaped like that layer's output channels, added to them (its cotangent is G_l).

    Returns ``(out, inputs)``: ``out`` the output channels (N, S) and ``inputs`` the channels
    entering each layer, (N, S, fan_in).
    """
    with_derivatives = lap_dims is not None
    h = _input_channels(x, with_derivatives)
    if with_derivatives:
        d = x.shape[1]
        mask = jnp.zeros((d,), x.dtype).at[jnp.asarray(list(lap_dims), dtype=jnp.int32)].set(1.0)
    inputs = []
    last = len(params) - 1
    for layer, (w, b) in enumerate(params):
        inputs.append(h)
        z = jnp.einsum("nsi,io->nso", h, w)
        z = z.at[:, 0, :].add(b)
        if perturb is not None:
            z = z + perturb[layer]
        if layer == last:
            return z[..., 0], inputs
        a = jnp.tanh(z[:, 0, :])
        s1 = 1.0 - a * a
        if not with_derivatives:
            h = a[:, None, :]
            continue
        s2 = -2.0 * a * s1
        dz = z[:, 1:-1, :]
        lap = s1 * z[:, -1, :] + s2 * jnp.einsum("j,njo->no", mask, dz * dz)
        h = jnp.concatenate([a[:, None, :], s1[:, None, :] * dz, lap[:, None, :]], axis=1)
    raise ValueError("params must hold at least one layer")


def jet(params, x, lap_dims: Sequence[int]) -> Jet:
    """(u, ∇u, Δu) of the MLP at the points ``x`` (N, D), the Laplacian over ``lap_dims``."""
    out, _ = forward(params, x, lap_dims)
    return Jet(out[:, 0], out[:, 1:-1], out[:, -1])


def residual_and_jacobian(params, x, lap_dims, residual_of_jet: Callable, scale):
    """(r, J) for per-point residuals r_n = scale · residual_of_jet(jet_n, x_n).

    ``lap_dims=None`` builds only the value channel and calls ``residual_of_jet(value, x)``
    (a boundary residual).  J rows follow ``ravel_pytree(params)`` ([W_1, b_1, W_2, …], each W
    row-major): the layer blocks Σ_s H ⊗ G are written into one (N, P) array.
    """
    with_derivatives = lap_dims is not None
    n = x.shape[0]

    def residuals(perturb):
        out, inputs = forward(params, x, lap_dims, perturb)
        if with_derivatives:
            r = residual_of_jet(Jet(out[:, 0], out[:, 1:-1], out[:, -1]), x)
        else:
            r = residual_of_jet(out[:, 0], x)
        return r * scale, inputs

    s = x.shape[1] + 2 if with_derivatives else 1
    zeros = [jnp.zeros((n, s, w.shape[1]), x.dtype) for w, _ in params]
    r, pullback, inputs = jax.vjp(residuals, zeros, has_aux=True)
    (grads,) = pullback(jnp.ones_like(r))  # r_n depends on point n only: G_l[n] = ∂r_n/∂Z_l[n]
    blocks = []
    for h, g in zip(inputs, grads):
        blocks.append(jnp.einsum("nsi,nso->nio", h, g).reshape(n, -1))
        blocks.append(g[:, 0, :])
    return r, jnp.concatenate(blocks, axis=1)
