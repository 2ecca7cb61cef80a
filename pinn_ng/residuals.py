"""The residual operator: batching, row scaling, J, its row blocks and matrix-free products.

A problem (:mod:`pinn_ng.problems`) defines only *per-point*, unscaled residuals.  This module
owns everything built on them, in one place:

- **batching and scaling**: r = (r_Ω(x_1..x_{N_Ω}) / √N_Ω, r_∂Ω(y_1..y_{N_∂Ω}) / √N_∂Ω), so the
  loss ½‖r‖² is the paper's mean-squared loss (:func:`row_scales`, :func:`scaled_residuals`);
- **J = ∂r/∂θ (N x P)**, computed *per point*: ``vmap`` over points of the parameter gradient
  of that point's residual.  One reverse pass of a tiny graph per row, batched by XLA, O(N·P)
  memory.  ``jax.jacrev`` of the batched residual would run N backward passes through the
  whole batch (O(N²) work and memory); :class:`DenseResidual` does that for plain callables;
- **row blocks of J** for kernels built block by block without holding J
  (:meth:`ResidualFn.row_blocks`);
- **matrix-free products** J v, Jᵀ u, and :meth:`~ResidualOperator.linearize` (one forward
  pass shared by many products, e.g. a CG solve).

The optimizers consume any object that satisfies the small :class:`ResidualOperator`
protocol; :func:`as_operator` wraps a plain callable ``(params, batch) -> r``.

Columns of J follow ``jax.flatten_util.ravel_pytree(params)``; the products take and return
flat vectors in that same order.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import channels, operators
from .gram import kernel_lower_from_jacobian
from .problems import Batch, Problem


# ------------------------------------------------------------------------- batching, scaling


def row_scales(n_interior: int, n_boundary: int) -> tuple[float, float]:
    """(1/√N_Ω, 1/√N_∂Ω): the row scaling of r, so that ½‖r‖² is the paper's loss."""
    return 1.0 / math.sqrt(n_interior), 1.0 / math.sqrt(n_boundary)


def scaled_residuals(problem: Problem, u: Callable, batch: Batch, method: str = "folx"):
    """Residual vector r (N_Ω + k·N_∂Ω,) of any scalar function ``u(x)`` on ``batch``.

    Interior rows come first, scaled by 1/√N_Ω; boundary rows follow, scaled by 1/√N_∂Ω,
    k = ``problem.n_boundary_residuals`` per point, each point's together.
    """
    problem.check_batch(batch)
    s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])
    r_i = jax.vmap(lambda x: problem.interior_residual(u, x, method))(batch.interior)
    r_b = jax.vmap(lambda x: problem.boundary_residual(u, x))(batch.boundary).reshape(-1)
    return jnp.concatenate([r_i * s_i, r_b * s_b])


# ------------------------------------------------------------------------------- checks


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


@jax.jit
def _leaves_finite(params):
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)])


def check_finite_params(params) -> None:
    """Raise ``ValueError`` if a (concrete) parameter leaf holds NaN or inf.  No-op under tracing.

    One fused reduction on the device and a transfer of one flag per leaf (no copy of the
    parameters).  Inside a trace (e.g. a loop body closing over concrete parameters) the flags
    are abstract and the check is skipped.
    """
    if _is_traced(params):
        return
    try:
        flags = np.asarray(_leaves_finite(params))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        # staged into an enclosing trace: the flags are abstract
        return
    bad = [int(i) for i in np.flatnonzero(~flags)]
    if bad:
        raise ValueError(f"parameters contain non-finite values (NaN/inf) in leaves {bad}")


# ------------------------------------------------------------------------------ protocol


@runtime_checkable
class ResidualOperator(Protocol):
    """What the optimizers need of a residual function (all flat vectors in ravel order).

    ``op(params, batch) -> r (N,)``; ``op.residual_and_jacobian(params, batch) -> (r, J)``;
    ``op.jvp(params, batch, v) -> J v``; ``op.vjp(params, batch, u) -> Jᵀ u``;
    ``op.linearize(params, batch) -> (r, jvp, vjp)``, the products as closures sharing one
    forward pass.  Operators that can also build J block by block (``kernel="blocked"``) have
    ``row_blocks`` (see :class:`ResidualFn`).
    """

    def __call__(self, params, batch) -> jax.Array: ...

    def residual_and_jacobian(self, params, batch) -> tuple[jax.Array, jax.Array]: ...

    def jvp(self, params, batch, v) -> jax.Array: ...

    def vjp(self, params, batch, u) -> jax.Array: ...

    def linearize(self, params, batch) -> tuple[jax.Array, Callable, Callable]: ...


def _products(residual: Callable):
    """(jvp, vjp, linearize) of ``residual(params, batch) -> r`` on flat vectors."""

    def jvp(params, batch, v):
        _, unravel = ravel_pytree(params)
        return jax.jvp(lambda p: residual(p, batch), (params,), (unravel(v),))[1]

    def vjp(params, batch, u):
        _, pullback = jax.vjp(lambda p: residual(p, batch), params)
        return ravel_pytree(pullback(u)[0])[0]

    def linearize(params, batch):
        flat, unravel = ravel_pytree(params)
        r, jv = jax.linearize(lambda w: residual(unravel(w), batch), flat)
        transpose = jax.linear_transpose(jv, flat)
        return r, jv, lambda u: transpose(u)[0]

    return jvp, vjp, linearize


class DenseResidual:
    """A plain callable ``(params, batch) -> r`` as a :class:`ResidualOperator`.

    J comes from ``jax.jacrev`` of the whole batched residual: correct, but N backward passes
    through the whole batch, so only sensible for small problems.  No ``row_blocks``.
    """

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"residual_fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.jvp, self.vjp, self.linearize = _products(fn)

    def __call__(self, params, batch):
        return self.fn(params, batch)

    def residual_and_jacobian(self, params, batch):
        flat, unravel = ravel_pytree(params)
        r = self.fn(params, batch)
        jac = jax.jacrev(lambda w: self.fn(unravel(w), batch))(flat)
        return r, jac

    def __repr__(self) -> str:
        return f"DenseResidual({self.fn!r})"


def as_operator(residual_fn) -> ResidualOperator:
    """``residual_fn`` itself if it is a :class:`ResidualOperator`, else a :class:`DenseResidual`."""
    if isinstance(residual_fn, ResidualOperator):
        return residual_fn
    return DenseResidual(residual_fn)


class SampleSpace(NamedTuple):
    """What a sample-space step with a dense kernel needs (see ``ResidualFn.sample_space``)."""

    r: jax.Array  # (N,)
    kernel: jax.Array  # (N, N): the lower triangle of J Jᵀ; the strictly upper part is zero
    jv: Callable  # v (P,) -> J v (N,)
    jtu: Callable  # u (N,) -> Jᵀ u (P,)


def sample_space_of_jacobian(r, jac) -> SampleSpace:
    """:class:`SampleSpace` from a dense J (K from its lower row blocks)."""
    return SampleSpace(r, kernel_lower_from_jacobian(jac, mirror=False), lambda v: jac @ v,
                       lambda u: jac.T @ u)


def sample_space(op, params, batch) -> SampleSpace:
    """``op.sample_space(params, batch)`` if ``op`` has one, else from its (r, J)."""
    method = getattr(op, "sample_space", None)
    if callable(method):
        return method(params, batch)
    return sample_space_of_jacobian(*op.residual_and_jacobian(params, batch))


def has_row_blocks(op) -> bool:
    """Whether ``op`` can build J block by block (``kernel="blocked"``)."""
    return callable(getattr(op, "row_blocks", None))


# ------------------------------------------------------------------------ the fast operator


def flatten_rows(tree, n: int):
    """Stack a pytree of per-row gradients (leading axis n) into an (n, P) matrix, ravel order."""
    return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(tree)],
                           axis=1)


class RowBlocks(NamedTuple):
    """J in ``n_blocks`` row blocks of ``block_size`` rows (zero rows pad the last block).

    ``rows(a)`` (a traced block index is fine) returns the scaled rows of block ``a``,
    shape (block_size, P).  Rows are interior points then boundary points, as in r.
    """

    n: int
    n_blocks: int
    block_size: int
    rows: Callable


#: How a :class:`ResidualFn` differentiates: ``"structured"`` (the channels of
#: :mod:`pinn_ng.channels`, for ``models.mlp`` networks) or per point with one of the
#: Laplacian methods of :mod:`pinn_ng.operators`.  ``"auto"`` (the default) takes
#: ``"structured"`` for ``models.mlp`` networks, whose sample space (r and K) and steps it
#: makes faster than folx's (``bench/structured_speed.py``), else ``"folx"``.
METHODS = ("structured",) + operators.METHODS


def _per_point(problem: Problem, apply: Callable, method: str):
    """(residual, rows) for any ``apply``: vmap over points of per-point derivatives."""

    def point_residual(kind):
        if kind == "interior":
            return lambda p, x: problem.interior_residual(lambda y: apply(p, y), x, method)
        return lambda p, x: problem.boundary_residual(lambda y: apply(p, y), x)

    point = {k: point_residual(k) for k in ("interior", "boundary")}

    def residual(params, batch):
        return scaled_residuals(problem, lambda x: apply(params, x), batch, method)

    def rows(params, points, kind, scale):
        if kind == "boundary" and problem.boundary_jet_fn is not None:
            # k residuals per point: k reverse passes of the point's tiny graph, rows
            # point-major as in r
            def value_and_jac(p, x):
                return jax.jacrev(lambda q: (point[kind](q, x),) * 2, has_aux=True)(p)[::-1]

            r, g = jax.vmap(value_and_jac, (None, 0))(params, points)
            return r.reshape(-1) * scale, flatten_rows(g, r.size) * scale
        r, g = jax.vmap(jax.value_and_grad(point[kind]), (None, 0))(params, points)
        return r * scale, flatten_rows(g, points.shape[0]) * scale

    return residual, rows


def _jet_residuals(problem: Problem):
    """(interior_of_jet, boundary_of_value, boundary_dims): unscaled residuals of whole
    batches from the channels' jet (interior) or value (boundary), as
    :func:`pinn_ng.channels.linearize` takes, and the ``lap_dims`` argument the boundary
    points need: None (the value channel) for Dirichlet data, ``()`` (value and gradient
    channels; the Laplacian channel stays zero) for a ``boundary_jet_fn``, whose residuals
    are (N, k)."""

    def interior_of_jet(jet, x):
        return jax.vmap(problem.interior_jet_fn)(jet.value, jet.grad, jet.laplacian, x)

    if problem.boundary_jet_fn is not None:
        def boundary_of_jet(jet, x):
            return jax.vmap(problem.boundary_of_jet)(jet.value, jet.grad, x)

        return interior_of_jet, boundary_of_jet, ()

    def boundary_of_value(value, x):
        return value - jax.vmap(problem.exact_fn)(x)

    return interior_of_jet, boundary_of_value, None


def linearize_by_kind(problem: Problem, params, batch: Batch):
    """(interior, boundary) :class:`pinn_ng.channels.Linearization` of a tanh MLP: the
    interior points with every channel, the boundary points with the value channel only
    (every channel with a ``boundary_jet_fn``, k rows per point), each row scaled as in r.
    What KFAC builds its Kronecker factors from."""
    interior_of_jet, boundary_fn, boundary_dims = _jet_residuals(problem)
    s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])
    lin_i = channels.linearize(params, batch.interior, problem.lap_dims, interior_of_jet, s_i,
                               problem.operator_diag)
    lin_b = channels.linearize(params, batch.boundary, boundary_dims, boundary_fn, s_b)
    return lin_i, lin_b


def _concat(a: channels.Linearization, b: channels.Linearization) -> channels.Linearization:
    """The rows of ``a`` then those of ``b`` (the same channels)."""
    return channels.Linearization(jnp.concatenate([a.r, b.r]),
                                  tuple(jnp.concatenate(p) for p in zip(a.inputs, b.inputs)),
                                  tuple(jnp.concatenate(p) for p in zip(a.grads, b.grads)))


def _structured(problem: Problem):
    """(residual, rows) of a tanh MLP from its forward-Laplacian channels, whole batches."""
    lap_dims, weights = problem.lap_dims, problem.operator_diag
    interior_of_jet, boundary_of_value, boundary_dims = _jet_residuals(problem)

    def residual(params, batch):
        problem.check_batch(batch)
        s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])
        r_i = interior_of_jet(channels.jet(params, batch.interior, lap_dims, weights),
                              batch.interior)
        if boundary_dims is None:
            out_b, _ = channels.forward(params, batch.boundary, None)
            r_b = boundary_of_value(out_b[:, 0], batch.boundary)
        else:
            r_b = boundary_of_value(channels.jet(params, batch.boundary, boundary_dims),
                                    batch.boundary).reshape(-1)
        return jnp.concatenate([r_i * s_i, r_b * s_b])

    def rows(params, points, kind, scale):
        if kind == "interior":
            return channels.residual_and_jacobian(params, points, lap_dims, interior_of_jet,
                                                  scale, weights)
        return channels.residual_and_jacobian(params, points, boundary_dims,
                                              boundary_of_value, scale)

    if boundary_dims is not None:
        # boundary residuals of u and ∇u (k per point): both kinds carry the same channels,
        # so their linearisations stack into one whose rows are all "full"
        def linearize_general(params, batch):
            lin = _concat(*linearize_by_kind(problem, params, batch))
            return lin, lin.r.shape[0]

        return (residual, rows) + _jacobian_and_kernel(linearize_general)

    def linearize_all(params, batch):
        # one pass over all N points (boundary points carry unused derivative channels):
        # J is assembled once, with no copy to stack interior and boundary rows
        n_i, n_b = batch.interior.shape[0], batch.boundary.shape[0]
        x = jnp.concatenate([batch.interior, batch.boundary])
        is_interior = jnp.arange(n_i + n_b) < n_i
        s_i, s_b = row_scales(n_i, n_b)
        scale = jnp.where(is_interior, s_i, s_b).astype(x.dtype)

        def residual_of_jet(jet, x):
            return jnp.where(is_interior, interior_of_jet(jet, x),
                             boundary_of_value(jet.value, x))

        return channels.linearize(params, x, lap_dims, residual_of_jet, scale, weights), n_i

    return (residual, rows) + _jacobian_and_kernel(linearize_all)


def _jacobian_and_kernel(linearize):
    """(r, J) and the sample-space products from ``linearize(params, batch) -> (lin, n)``
    (``n``: the rows before which K's blocks are split)."""

    def residual_and_jacobian(params, batch):
        lin, _ = linearize(params, batch)
        return lin.r, channels.jacobian(lin)

    def sample_space(params, batch):
        lin, n = linearize(params, batch)
        return SampleSpace(lin.r, *channels.kernel_products(lin, n))

    return residual_and_jacobian, sample_space


class ResidualFn:
    """The residual operator of the network ``apply(params, x)`` on ``problem``.

    ``ResidualFn(problem, apply)(params, batch) -> r``; satisfies :class:`ResidualOperator`
    with the per-point J, and adds (all jit-compiled closures, nothing static on ``self``):

    - ``jacobian(params, batch)`` -> J (N, P);
    - ``point_jacobian(params, points, kind, scale)``: (r_rows, J_rows) of a block of interior
      or boundary points, each row times ``scale``;
    - ``row_blocks(params, batch, block_size)``: :class:`RowBlocks` of J, for memory-lean
      kernels (never more than one block of J alive at a time);
    - ``loss(params, batch)``: ½‖r‖².

    Called eagerly, it checks the batch shape and that parameters are finite.
    """

    def __init__(self, problem: Problem, apply: Callable, method: str = "auto"):
        widths = channels.tanh_mlp_widths(apply)
        if method == "auto":
            method = "structured" if widths is not None else "folx"
        if method not in METHODS:
            raise ValueError(f"unknown residual method {method!r}; valid: {list(METHODS)}")
        if method == "structured" and widths is None:
            raise ValueError("method='structured' needs a pinn_ng.models.mlp network (apply "
                             "without tanh_mlp_widths); use method='folx' for other networks")
        self.problem = problem
        self.apply = apply
        self.method = method

        sample_space = None
        if method == "structured":
            residual, rows, residual_and_jacobian, sample_space = _structured(problem)
        else:
            residual, rows = _per_point(problem, apply, method)

            def residual_and_jacobian(params, batch):
                s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])
                r_i, j_i = rows(params, batch.interior, "interior", s_i)
                r_b, j_b = rows(params, batch.boundary, "boundary", s_b)
                return jnp.concatenate([r_i, r_b]), jnp.concatenate([j_i, j_b], axis=0)

        if sample_space is None:  # from J: r, J and K in one compiled function
            jacobian_kernel = jax.jit(lambda p, b: (lambda r, j: (
                r, j, kernel_lower_from_jacobian(j, mirror=False)))(*residual_and_jacobian(p, b)))

            def sample_space(params, batch):
                r, jac, kernel = jacobian_kernel(params, batch)
                return SampleSpace(r, kernel, lambda v: jac @ v, lambda u: jac.T @ u)

        jvp, vjp, linearize = _products(residual)
        self._residual = jax.jit(residual)
        self._sample_space = sample_space
        self._residual_and_jacobian = jax.jit(residual_and_jacobian)
        self._jvp = jax.jit(jvp)
        self._vjp = jax.jit(vjp)
        self._linearize = linearize
        self._rows = jax.jit(rows, static_argnums=(2,))

    def _check(self, params, batch) -> None:
        self.problem.check_batch(batch)
        check_finite_params(params)

    def __call__(self, params, batch: Batch):
        self._check(params, batch)
        return self._residual(params, batch)

    def loss(self, params, batch: Batch):
        """½‖r‖²."""
        r = self(params, batch)
        return 0.5 * jnp.dot(r, r)

    def jacobian(self, params, batch: Batch):
        """J = ∂r/∂θ, shape (N, P), per point; columns in ``ravel_pytree`` order."""
        self._check(params, batch)
        return self._residual_and_jacobian(params, batch)[1]

    def residual_and_jacobian(self, params, batch: Batch):
        """(r, J) in one pass (the per-point forward passes are shared)."""
        self._check(params, batch)
        return self._residual_and_jacobian(params, batch)

    def sample_space(self, params, batch: Batch) -> "SampleSpace":
        """r, the lower triangle of K = J Jᵀ and the products v ↦ J v, u ↦ Jᵀ u: what a
        sample-space (Woodbury) step with a Cholesky solve needs, not J itself.

        For ``"structured"`` none of it assembles J: K's interior block comes from row-block
        products of J's layer blocks, its boundary rows from their single (value) channel
        (:func:`pinn_ng.channels.kernel_block`: a fraction of the rows' products for wide
        layers), and both products from the channels.  Otherwise all of it comes from J.
        Not jitted by itself (the products are closures): call it inside a jitted step.
        """
        self.problem.check_batch(batch)
        return self._sample_space(params, batch)

    def jvp(self, params, batch: Batch, v):
        """J v for a flat tangent ``v`` of shape (P,)."""
        self._check(params, batch)
        return self._jvp(params, batch, v)

    def vjp(self, params, batch: Batch, u):
        """Jᵀ u (flat, shape (P,)) for ``u`` of shape (N,): one backward pass of the batch."""
        self._check(params, batch)
        return self._vjp(params, batch, u)

    def linearize(self, params, batch: Batch):
        """(r, v ↦ J v, u ↦ Jᵀ u): one forward pass, then each product reuses its linearisation.

        For repeated products at the same point (a CG solve): ``jax.linearize`` stores the
        forward pass's intermediates once, so every later product is a linear pass only.
        """
        self._check(params, batch)
        return self._linearize(params, batch)

    def channel_linearizations(self, params, batch: Batch):
        """(interior, boundary) channels of the batch (:func:`linearize_by_kind`); only for
        ``pinn_ng.models.mlp`` networks.  Not jitted by itself: call it inside a jitted step."""
        if channels.tanh_mlp_widths(self.apply) is None:
            raise ValueError("channel_linearizations needs a pinn_ng.models.mlp network "
                             "(apply without tanh_mlp_widths)")
        self.problem.check_batch(batch)
        return linearize_by_kind(self.problem, params, batch)

    def point_jacobian(self, params, points, kind: str, scale: float):
        """(r_rows, J_rows) for a block of ``kind`` points, each row multiplied by ``scale``."""
        if kind not in ("interior", "boundary"):
            raise ValueError(f"kind must be 'interior' or 'boundary', got {kind!r}")
        return self._rows(params, points, kind, scale)

    def row_blocks(self, params, batch: Batch, block_size: int) -> RowBlocks:
        """J as :class:`RowBlocks` of ``block_size`` rows, each recomputed on demand.

        Points of both kinds are stacked and padded to a multiple of ``block_size``; a row is
        the gradient of its own point's (interior or boundary) residual times its scale (0 for
        padding), so the blocks stacked are exactly J with zero rows appended.  With k > 1
        boundary residuals per point, a boundary point fills k rows, each its own residual.
        """
        self.problem.check_batch(batch)
        n_i, n_b = batch.interior.shape[0], batch.boundary.shape[0]
        k = self.problem.n_boundary_residuals
        n = n_i + k * n_b
        m = int(block_size)
        n_blk = math.ceil(n / m)
        n_pad = n_blk * m
        dtype = batch.interior.dtype
        pts = jnp.concatenate([batch.interior, jnp.repeat(batch.boundary, k, axis=0)])
        pts = jnp.concatenate([pts, jnp.broadcast_to(pts[:1], (n_pad - n, pts.shape[1]))])
        # which of its point's k boundary residuals a row is (0 for interior rows)
        comp = jnp.concatenate([jnp.zeros(n_i, jnp.int32), jnp.tile(jnp.arange(k), n_b),
                                jnp.zeros(n_pad - n, jnp.int32)])
        is_int = jnp.arange(n_pad) < n_i
        s_i, s_b = row_scales(n_i, n_b)
        scale = jnp.where(is_int, s_i, s_b).astype(dtype)
        scale = jnp.where(jnp.arange(n_pad) < n, scale, 0.0)
        pts_b = pts.reshape(n_blk, m, -1)
        int_b = is_int.reshape(n_blk, m)
        scale_b = scale.reshape(n_blk, m)
        comp_b = comp.reshape(n_blk, m)

        def rows(a):
            x, flag, s = pts_b[a], int_b[a], scale_b[a]
            _, j_int = self._rows(params, x, "interior", 1.0)
            _, j_bnd = self._rows(params, x, "boundary", 1.0)
            if k > 1:  # each point's k rows, then the one this row is
                j_bnd = jnp.take_along_axis(j_bnd.reshape(m, k, -1),
                                            comp_b[a][:, None, None], axis=1)[:, 0]
            return jnp.where(flag[:, None], j_int, j_bnd) * s[:, None]

        return RowBlocks(n, n_blk, m, rows)

    def __repr__(self) -> str:
        return f"ResidualFn(problem={self.problem.name!r}, method={self.method!r})"
