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

``weights`` (a_1..a_D) turns the Laplacian channel into Σ_j a_j ∂_jj h, a diagonal
second-order operator (wave, anisotropic diffusion): the closed form is linear in the 0/1 mask
of ``lap_dims``, which the coefficients replace.  A residual may return several values per
point (shape (N, k), e.g. u and u_t at t = 0): each becomes its own row of J.

folx (:mod:`pinn_ng.operators`) stays the general path for any other ``apply``, and the
reference of the tests.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from . import blas
from .gram import kernel_lower_from_jacobian


class Jet(NamedTuple):
    """Derivatives of the network at N points."""

    value: jax.Array  # (N,)
    grad: jax.Array  # (N, D): ∂u/∂x_j for every input coordinate (time last)
    laplacian: jax.Array  # (N,): Σ_{j ∈ lap_dims} ∂²u/∂x_j²


def tanh_mlp_widths(apply) -> tuple | None:
    """The layer widths if ``apply`` is a ``pinn_ng.models.mlp`` network, else None."""
    return getattr(apply, "tanh_mlp_widths", None)


def _diagonal(lap_dims, weights, d: int, dtype):
    """The coefficient of each ∂_jj in the Laplacian channel: ``weights``, else the 0/1 mask
    of ``lap_dims``."""
    if weights is not None:
        a = jnp.asarray(weights, dtype)
        if a.shape != (d,):
            raise ValueError(f"weights must have one entry per input coordinate ({d}), got "
                             f"shape {a.shape}")
        return a
    return jnp.zeros((d,), dtype).at[jnp.asarray(list(lap_dims), dtype=jnp.int32)].set(1.0)


def _input_channels(x, with_derivatives: bool):
    """Channels of the input layer: (N, S, D) with S = D + 2 (value, ∂_1..∂_D, Δ) or S = 1."""
    n, d = x.shape
    if not with_derivatives:
        return x[:, None, :]
    eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (n, d, d))
    zero = jnp.zeros((n, 1, d), x.dtype)
    return jnp.concatenate([x[:, None, :], eye, zero], axis=1)


def forward(params, x, lap_dims: Sequence[int] | None, perturb=None, weights=None):
    """Propagate channels through the MLP ``params`` at points ``x`` (N, D).

    ``lap_dims=None``: the value channel only (S = 1, e.g. boundary points).  Otherwise S = D + 2
    channels, the Laplacian over ``lap_dims`` (Σ_j a_j ∂_jj with ``weights``).  ``perturb``
    (optional): one array per layer, shaped like that layer's output channels, added to them
    (its cotangent is G_l).

    Returns ``(out, inputs)``: ``out`` the output channels (N, S) and ``inputs`` the channels
    entering each layer, (N, S, fan_in).
    """
    with_derivatives = lap_dims is not None
    h = _input_channels(x, with_derivatives)
    if with_derivatives:
        mask = _diagonal(lap_dims, weights, x.shape[1], x.dtype)
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


def jet(params, x, lap_dims: Sequence[int], weights=None) -> Jet:
    """(u, ∇u, Δu) of the MLP at the points ``x`` (N, D), the Laplacian over ``lap_dims``
    (Σ_j a_j ∂_jj u with ``weights``).

    The same channels as :func:`forward`, kept as three arrays (value (N, w), first
    derivatives (N, D, w), Laplacian (N, w)) so that no layer concatenates them, and the first
    layer in closed form: its input's derivative channels are the unit vectors and its
    Laplacian is zero, so ∂_j z = W[j] for every point and Δz = 0.  The residual (and so each
    line-search candidate) runs through this.
    """
    mask = _diagonal(lap_dims, weights, x.shape[1], x.dtype)
    (w, b), rest = params[0], params[1:]
    z = x @ w + b
    if not rest:
        return Jet(z[:, 0], jnp.broadcast_to(w[:, 0], x.shape), jnp.zeros_like(z[:, 0]))
    a = jnp.tanh(z)
    s1 = 1.0 - a * a
    grad = s1[:, None, :] * w[None]
    lap = (-2.0 * a * s1) * (mask @ (w * w))
    for layer, (w, b) in enumerate(rest):
        zv = a @ w + b
        zg = jnp.einsum("ndi,io->ndo", grad, w)
        zl = lap @ w
        if layer == len(rest) - 1:
            return Jet(zv[:, 0], zg[:, :, 0], zl[:, 0])
        a = jnp.tanh(zv)
        s1 = 1.0 - a * a
        grad = s1[:, None, :] * zg
        lap = s1 * zl + (-2.0 * a * s1) * jnp.einsum("j,njo->no", mask, zg * zg)


class Linearization(NamedTuple):
    """The residuals of N points and the channels that give their J, layer by layer.

    ``inputs[l]`` (N, S, fan_in + 1): the channels z̃ entering layer l, with the bias entry
    appended (1 on the value channel, 0 on the others); ``grads[l]`` (N, S, fan_out): the
    gradients g of each point's residual with respect to layer l's output channels.  Row n of
    layer l's block of J is Σ_s z̃_{n,s} ⊗ g_{n,s}, flattened row-major: the weights (fan_in
    rows) then the bias, as ``ravel_pytree`` orders ``(W, b)``.
    """

    r: jax.Array
    inputs: tuple
    grads: tuple

    def rows(self, start: int, stop: int) -> "Linearization":
        """The points ``start:stop``."""
        return Linearization(self.r[start:stop], tuple(h[start:stop] for h in self.inputs),
                             tuple(g[start:stop] for g in self.grads))

    def value_channel(self) -> "Linearization":
        """Only the value channel (S = 1): exact for residuals of the network's value alone
        (boundary points), whose gradients on the derivative channels are zero."""
        return Linearization(self.r, tuple(h[:, :1] for h in self.inputs),
                             tuple(g[:, :1] for g in self.grads))


def linearize(params, x, lap_dims, residual_of_jet: Callable, scale,
              weights=None) -> Linearization:
    """Residuals r_n = scale · residual_of_jet(jet_n, x_n) and their channels, in one forward
    and one reverse pass of the batch.

    ``lap_dims=None`` builds only the value channel and calls ``residual_of_jet(value, x)``
    (a boundary residual).  ``weights``: see :func:`forward`.  A residual of shape (N, k)
    gives N·k rows, point n's k residuals together (rows n·k … n·k + k − 1), at k reverse
    passes; ``scale`` is then a number or one per point.
    """
    with_derivatives = lap_dims is not None
    n = x.shape[0]

    def residuals(perturb):
        out, inputs = forward(params, x, lap_dims, perturb, weights)
        if with_derivatives:
            r = residual_of_jet(Jet(out[:, 0], out[:, 1:-1], out[:, -1]), x)
        else:
            r = residual_of_jet(out[:, 0], x)
        factor = jnp.asarray(scale, x.dtype)
        return r * (factor[:, None] if r.ndim == 2 and factor.ndim == 1 else factor), inputs

    s = x.shape[1] + 2 if with_derivatives else 1
    zeros = [jnp.zeros((n, s, w.shape[1]), x.dtype) for w, _ in params]
    r, pullback, inputs = jax.vjp(residuals, zeros, has_aux=True)
    bias = jnp.zeros((n, s, 1), x.dtype).at[:, 0, 0].set(1.0)
    inputs = tuple(jnp.concatenate([h, bias], axis=2) for h in inputs)
    if r.ndim == 1:
        # r_n depends on point n only: G_l[n] = ∂r_n/∂Z_l[n]
        (grads,) = pullback(jnp.ones_like(r))
        return Linearization(r, inputs, tuple(grads))
    k = r.shape[1]
    # one reverse pass per residual j of a point: cotangent 1 on column j of every point
    (grads,) = jax.vmap(pullback)(jnp.broadcast_to(jnp.eye(k, dtype=r.dtype)[:, None, :],
                                                   (k, n, k)))
    grads = tuple(jnp.swapaxes(g, 0, 1).reshape(n * k, *g.shape[2:]) for g in grads)
    inputs = tuple(jnp.repeat(h, k, axis=0) for h in inputs)
    return Linearization(r.reshape(n * k), inputs, grads)


def layer_jacobian(h, g):
    """Σ_s h[:, s] ⊗ g[:, s], flattened: the (N, (fan_in + 1)·fan_out) block of one layer."""
    n, s, _ = h.shape
    if s == 1:  # the value channel alone (boundary rows): an outer product beats a matmul
        acc = h[:, 0, :, None] * g[:, 0, None, :]
    else:  # from two channels on, a batched matmul beats a fused loop over the channels
        acc = jnp.einsum("nsi,nso->nio", h, g)
    return acc.reshape(n, -1)


def layer_blocks(lin: Linearization) -> list:
    """J's column blocks, one per layer: J = concatenate(layer_blocks(lin), axis=1)."""
    return [layer_jacobian(h, g) for h, g in zip(lin.inputs, lin.grads)]


def jacobian(lin: Linearization):
    """J (N, P) in ``ravel_pytree(params)`` order."""
    return jnp.concatenate(layer_blocks(lin), axis=1)


def layer_offsets(lin: Linearization) -> list[tuple[int, int]]:
    """The column range of each layer's block in J."""
    bounds, start = [], 0
    for h, g in zip(lin.inputs, lin.grads):
        stop = start + h.shape[2] * g.shape[2]
        bounds.append((start, stop))
        start = stop
    return bounds


def _channel_flops(a: Linearization, b: Linearization, layer: int) -> tuple[int, int]:
    """Multiply-adds of one layer's J_a J_bᵀ: (from the channels, from the rows of J)."""
    (na, sa, fin), fout = a.inputs[layer].shape, a.grads[layer].shape[2]
    nb, sb = b.inputs[layer].shape[:2]
    return na * nb * sa * sb * (fin + fout), na * nb * fin * fout


def _layer_rows(lin: Linearization, rows, layer: int, bounds):
    if rows is None:
        return layer_jacobian(lin.inputs[layer], lin.grads[layer])
    if hasattr(rows, "shape"):  # J itself: its columns of this layer
        return rows[:, bounds[0]:bounds[1]]
    return rows[layer]  # a list of layer blocks


def kernel_block(a: Linearization, b: Linearization, rows_a=None, rows_b=None):
    """J_a J_bᵀ (N_a, N_b), summed over layers, each layer the cheaper of two ways:

    - from the channels: Σ_{s,t} (z̃_{a,s}·z̃_{b,t}) (g_{a,s}·g_{b,t}), i.e. two matmuls of
      inner size fan_in + 1 and fan_out per channel pair: S_a·S_b·(fan_in + 1 + fan_out)
      multiply-adds per entry;
    - from the rows of J: (fan_in + 1)·fan_out.  ``rows_a``/``rows_b``: J of those points or
      its list of layer blocks, if at hand (else the layer's rows are built).

    With S = 1 on one side (boundary points) the channels win for every wide layer.
    """
    total = None
    for layer, bounds in enumerate(layer_offsets(a)):
        by_channels, by_rows = _channel_flops(a, b, layer)
        if by_channels < by_rows:
            hh = jnp.einsum("asi,bti->asbt", a.inputs[layer], b.inputs[layer])
            gg = jnp.einsum("aso,bto->asbt", a.grads[layer], b.grads[layer])
            part = jnp.einsum("asbt,asbt->ab", hh, gg)
        else:
            part = (_layer_rows(a, rows_a, layer, bounds)
                    @ _layer_rows(b, rows_b, layer, bounds).T)
        total = part if total is None else total + part
    return total


class KernelProducts(NamedTuple):
    """The lower triangle of K = J Jᵀ (strictly upper part zero) and v ↦ J v, u ↦ Jᵀ u."""

    kernel: jax.Array
    jv: Callable
    jtu: Callable


def kernel_products(lin: Linearization, n_full: int, n_blocks: int | None = None):
    """:class:`KernelProducts` for points whose first ``n_full`` residuals use every channel
    and whose others use the value channel only (interior, then boundary points), without
    assembling J.

    The rows of the first points are built as J's layer blocks (never concatenated): K's block
    of them from row-block products, their products J v and Jᵀ u from the blocks.  With XLA's
    products the value-only points stay channels: their rows of K from :func:`kernel_block`,
    their products from :func:`jvp_product` / :func:`transpose_product` with S = 1.  With the
    BLAS's (:func:`pinn_ng.blas.kernel_backend`) their rows join the layer blocks, and K is
    one ``?syrk`` per layer over all N rows.
    """
    n = lin.r.shape[0]
    full = lin.rows(0, n_full)
    blocks = layer_blocks(full)
    offsets = layer_offsets(lin)

    def products(blocks, kernel):
        def jv(v):
            return sum(j @ v[c0:c1] for j, (c0, c1) in zip(blocks, offsets))

        def jtu(u):
            # u @ J_l, not J_l.T @ u: XLA's CPU emitter is far slower for the transposed form
            return jnp.concatenate([u @ j for j in blocks])

        return KernelProducts(kernel, jv, jtu)

    if n_full == n:
        return products(blocks, kernel_lower_from_jacobian(blocks, n_blocks, mirror=False))
    value = lin.rows(n_full, n).value_channel()
    if blas.kernel_backend(None, blocks) == "blas":
        # The BLAS's ?syrk over every row's block costs less than the value rows' products
        # from their channels plus the N x N copy that stacks them under K.
        blocks = [jnp.concatenate([j, layer_jacobian(h, g)])
                  for j, h, g in zip(blocks, value.inputs, value.grads)]
        return products(blocks, kernel_lower_from_jacobian(blocks, n_blocks, mirror=False))
    below = (kernel_block(value, full, None, blocks), kernel_block(value, value))
    kernel = kernel_lower_from_jacobian(blocks, n_blocks, mirror=False, below=below)
    jv_full, jtu_full = products(blocks, None)[1:]
    return KernelProducts(
        kernel,
        lambda v: jnp.concatenate([jv_full(v), jvp_product(value, v)]),
        lambda u: jtu_full(u[:n_full]) + transpose_product(value, u[n_full:]))


def jvp_product(lin: Linearization, v):
    """J v (N,) for a flat ``v`` (P,): per layer Σ_s (z̃_{n,s} V_l) · g_{n,s}."""
    out = 0.0
    for (c0, c1), h, g in zip(layer_offsets(lin), lin.inputs, lin.grads):
        t = jnp.einsum("nsi,io->nso", h, v[c0:c1].reshape(h.shape[2], g.shape[2]))
        out = out + jnp.sum(t * g, axis=(1, 2))
    return out


def transpose_product(lin: Linearization, u):
    """Jᵀ u (P,) from the channels: per layer Σ_n u_n Σ_s z̃_{n,s} ⊗ g_{n,s}, one matmul."""
    return jnp.concatenate([
        jnp.einsum("nsi,nso->io", h * u[:, None, None], g).reshape(-1)
        for h, g in zip(lin.inputs, lin.grads)])


def residual_and_jacobian(params, x, lap_dims, residual_of_jet: Callable, scale, weights=None):
    """(r, J) for per-point residuals r_n = scale · residual_of_jet(jet_n, x_n).

    ``lap_dims=None`` builds only the value channel and calls ``residual_of_jet(value, x)``
    (a boundary residual).  J rows follow ``ravel_pytree(params)`` ([W_1, b_1, W_2, …], each W
    row-major); a residual of shape (N, k) gives N·k rows (see :func:`linearize`).
    """
    lin = linearize(params, x, lap_dims, residual_of_jet, scale, weights)
    return lin.r, jacobian(lin)
