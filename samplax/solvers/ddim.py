"""DDIM: the first-order exponential integrator (Song, Meng & Ermon 2021)."""

from __future__ import annotations

import jax.numpy as jnp

from samplax.solvers._common import check_timesteps
from samplax.solvers.plan import Plan, PlanBuilder


def ddim(schedule, timesteps) -> Plan:
    """Deterministic DDIM (eta = 0), Song et al. 2021, eq. 12.

    In DESIGN notation, the step ``s -> t`` with ``h = lam_t - lam_s`` is the
    data-form first-order exponential integrator (Lu et al. 2022b, DPM-Solver++
    eq. 9): ``x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) x0_hat(x_s, s)``,
    which equals Euler in the EDM view. Exact for point-mass data; reaches
    ``sigma = 0`` (then ``x_t = x0_hat``) without NaN. NFE = ``len(timesteps) - 1``.
    """
    ts = check_timesteps(schedule, timesteps)
    b = PlanBuilder(schedule)
    for i in range(ts.shape[0] - 1):
        s, t = ts[i], ts[i + 1]
        out = b.evaluate(b.x, s)
        h = schedule.lam(t) - out.lam
        b.set_x(schedule.sigma(t) / schedule.sigma(s) * b.x
                - schedule.alpha(t) * jnp.expm1(-h) * out.d)
    return b.build()
