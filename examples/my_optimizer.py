"""An optimizer of your own, registered by name: ENGD-W whose damping decays.

    PINN_NG_PLUGINS=examples/my_optimizer.py pinn-ng run --problem poisson2d \\
        --optimizer engd_w_decay --hparam damping=1e-4 --max-steps 20 --out runs/decay

Built from pinn-ng's blocks: the ENGD-W direction φ = Jᵀ(K + λ_k I)⁻¹ r with λ_k a schedule
(large early, when the kernel is far from the solution's, small later), then the grid line
search.  The keyword arguments are its hyper-parameters (``--hparam``, presets, tuning spaces).
"""

import optax

from pinn_ng import optim


@optim.register("engd_w_decay")
def engd_w_decay(residual_fn, damping=1e-4, decay_rate=0.1, decay_steps=10,
                 final_damping=1e-10):
    """λ_k = max(damping · decay_rate^(k / decay_steps), final_damping)."""
    schedule = optax.exponential_decay(damping, transition_steps=decay_steps,
                                       decay_rate=decay_rate, end_value=final_damping)
    return optax.chain(optim.scale_by_engd_woodbury(residual_fn, damping=schedule),
                       optim.scale_by_grid_line_search(residual_fn))
