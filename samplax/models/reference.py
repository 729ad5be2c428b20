"""High-accuracy reference solutions of the probability-flow ODE with diffrax.

In the EDM variables ``x_tilde = x/alpha`` and ``lam`` the PF-ODE is
``d x_tilde / d lam = D(alpha x_tilde, t(lam)) - x_tilde`` for *every* noise
schedule (Karras et al. 2022 eq. 4 with ``sigma_tilde = e^{-lam}``): a smooth,
non-stiff equation that an adaptive high-order solver integrates to round-off.
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp

from samplax.schedules.base import NoiseSchedule

# Past this half log-SNR (sigma/alpha = e^-30, about 1e-13) the remaining flow to
# sigma = 0 moves x_tilde by less than float64 resolution of typical data.
LAM_CAP = 30.0

# diffrax's Dopri8 has 14 stages, the last evaluated at the step's end and reused as
# the next step's first (FSAL): 13 new evaluations per step, accepted or rejected,
# and one at the start (tests/test_search_cost.py counts them).
DOPRI8_EVALS_PER_STEP = 13


def reference_solve(
    denoiser,
    schedule: NoiseSchedule,
    x_T,
    ts,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 100_000,
    return_evaluations: bool = False,
):
    """Solve the PF-ODE from ``x_T`` at ``ts[0]`` and return the states at every ``ts``.

    Uses ``diffrax.Dopri8`` with a PID step-size controller. Run it in float64
    (``jax.config.update("jax_enable_x64", True)``) for reference accuracy.

    Args:
        denoiser: ``D(x, t) -> x0_hat``.
        schedule: the noise schedule that defines ``alpha``, ``sigma``, ``lam``.
        x_T: initial state at ``ts[0]``.
        ts: strictly decreasing times (noise to data); a final time with
            ``sigma = 0`` is handled as the limit.

    Returns:
        ``[len(ts), *x_T.shape]`` array of states; with ``return_evaluations``
        also the number of denoiser calls (each on the whole batch ``x_T``: the batch
        is one ODE with one step-size control).
    """
    ts = jnp.asarray(ts)
    lams = jnp.minimum(schedule.lam(ts), LAM_CAP)
    alphas = schedule.alpha(ts)

    def vf(lam, y, args):
        t = schedule.t_of_lam(lam)
        return denoiser(schedule.alpha(t) * y, t) - y

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        t0=lams[0],
        t1=lams[-1],
        dt0=None,
        y0=x_T / alphas[0],
        saveat=diffrax.SaveAt(ts=lams),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, dtmin=None),
        max_steps=max_steps,
    )
    expand = (...,) + (None,) * jnp.ndim(x_T)
    ys = sol.ys * alphas[expand]
    if return_evaluations:
        return ys, DOPRI8_EVALS_PER_STEP * sol.stats["num_steps"] + 1
    return ys

