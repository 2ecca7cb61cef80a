"""First-order and quasi-Newton baselines from optax, with the same call shape as the rest.

``update(grads, state, params, batch=batch)`` works for all of them: SGD and Adam ignore the
batch; L-BFGS uses it to build the loss function its line search needs.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from ..residuals import as_operator


def sgd(residual_fn=None, learning_rate: float = 2.895e-3, momentum: float = 0.3):
    """SGD with (heavy-ball) momentum; defaults are the paper's best 5d run."""
    return optax.with_extra_args_support(optax.sgd(learning_rate, momentum=momentum or None))


def adam(residual_fn=None, learning_rate: float = 2.808e-4):
    """Adam; the default η is the paper's best 5d run."""
    return optax.with_extra_args_support(optax.adam(learning_rate))


def lbfgs(residual_fn, memory_size: int = 10, learning_rate=None):
    """optax L-BFGS with its zoom line search, on the loss ½‖r‖² of the current batch."""
    op = as_operator(residual_fn)
    inner = optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size)

    def init(params):
        return inner.init(params)

    def update(grads, state, params=None, *, batch=None, **extra_args):
        if params is None or batch is None:
            raise ValueError("lbfgs needs update(grads, state, params, batch=batch)")

        def value_fn(p):
            r = op(p, batch)
            return 0.5 * jnp.dot(r, r)

        return inner.update(grads, state, params, value=value_fn(params), grad=grads,
                            value_fn=value_fn)

    return optax.GradientTransformationExtraArgs(init, update)
