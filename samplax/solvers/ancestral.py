"""Ancestral samplers: DDPM, DDIM with eta, Euler ancestral (k-diffusion).

All three are one step in the EDM view (Karras et al. 2022; DESIGN notation
``sigma_tilde = sigma/alpha = e^{-lam}``, ``x_tilde = x/alpha``): from ``s`` to ``t``
an Euler (= DDIM) step to the lower noise level ``sigma_down``, then fresh noise of
standard deviation ``sigma_up`` brings the level back to ``sigma_tilde_t``::

    sigma_up   = min(st_t, eta sqrt(st_t^2 (st_s^2 - st_t^2) / st_s^2)),
    sigma_down = sqrt(st_t^2 - sigma_up^2),
    x_tilde_t  = x_tilde_s + (sigma_down - st_s) (x_tilde_s - x0_hat)/st_s + s_noise sigma_up z,
    x_t        = alpha_t x_tilde_t.

``sigma_up`` is k-diffusion's ``get_ancestral_step``; in DESIGN notation
``alpha_t sigma_up = eta sigma_t sqrt(1 - e^{-2h})`` (``h = lam_t - lam_s``), which is
exactly DDIM's ``sigma_t(eta) = eta sqrt((1 - a_t)/(1 - a_s)) sqrt(1 - a_s/a_t)``
(Song et al. 2021, eq. 16, ``a = alpha^2``, VP) written for any schedule, and the
deterministic part is DDIM's ``alpha_t x0_hat + sqrt(sigma_t^2 - sigma_t(eta)^2) eps_hat``
(eq. 12). So Euler ancestral with ``s_noise = 1`` *is* DDIM(eta), and ``eta = 1`` is
DDPM's ancestral sampler (Ho et al. 2020, the posterior ``q(x_t | x_s, x0_hat)``)
on any set of times. ``eta = 0`` is DDIM / Euler exactly (the noise coefficients
are zero). A last step to ``sigma = 0`` returns ``alpha_t x0_hat`` with no noise.
"""

from __future__ import annotations

import jax.numpy as jnp

from samplax.solvers._common import check_timesteps
from samplax.solvers._stochastic import check_nonneg, host_coefficients
from samplax.solvers.edm import _euler_step, edm_grid
from samplax.solvers.plan import Plan, PlanBuilder


def ancestral_levels(st_s, st_t, eta):
    """``(sigma_down, sigma_up)`` of an ancestral step ``st_s -> st_t`` (EDM noise levels).

    k-diffusion's ``get_ancestral_step``; ``eta = 0`` gives exactly ``(st_t, 0)``.
    Pure ``jnp``; finite gradients at ``st_t = 0``.
    """
    eta = jnp.asarray(eta, jnp.result_type(st_t, float))
    # differences of squares as products: exact zeros survive FMA contraction
    var = st_t**2 * ((st_s - st_t) * (st_s + st_t)) / st_s**2
    pos = var > 0
    up = eta * jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)
    up = jnp.minimum(st_t, up)
    down2 = (st_t - up) * (st_t + up)
    dpos = down2 > 0
    down = jnp.where(dpos, jnp.sqrt(jnp.where(dpos, down2, 1.0)), 0.0)
    down = jnp.where(eta == 0, st_t, down)
    return down, up


def _build(schedule, timesteps, eta, s_noise) -> Plan:
    check_nonneg("eta", eta)
    check_nonneg("s_noise", s_noise)
    ts = check_timesteps(schedule, timesteps)
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    for i in range(ts.shape[0] - 1):
        down, up = host_coefficients(ancestral_levels, sg[i], sg[i + 1], eta)
        # Euler (= DDIM) to sigma_down: edm's step with the target level replaced.
        _euler_step(b, times[i], times[i + 1], alpha[i], alpha[i + 1], sg[i], down)
        z = b.noise(span=(times[i + 1], times[i]))
        b.set_x(b.x + z * (alpha[i + 1] * s_noise * up))
    return b.build()


def euler_ancestral(schedule, timesteps, eta: float = 1.0, s_noise: float = 1.0) -> Plan:
    """Euler ancestral sampling (k-diffusion ``sample_euler_ancestral``), as a plan.

    Each step ``s -> t`` (module docstring, DESIGN notation): Euler in the EDM view
    to ``sigma_down``, then ``alpha_t s_noise sigma_up z``. ``s_noise`` scales only
    the added noise (as in k-diffusion), not ``sigma_down``. ``eta = 0`` is
    :func:`samplax.solvers.edm.euler` exactly. NFE = ``len(timesteps) - 1``.

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times (the last may have ``sigma = 0``).
        eta: ancestral noise amount (``0``: deterministic, ``1``: full ancestral).
        s_noise: multiplier of the added noise.

    Returns:
        A stochastic :class:`~samplax.solvers.plan.Plan` (pass a key to ``sample``);
        every draw carries its step ``[t_{i+1}, t_i]`` as its Brownian span.
    """
    return _build(schedule, timesteps, eta, s_noise)


def ddim_eta(schedule, timesteps, eta: float = 0.0) -> Plan:
    """DDIM with stochasticity ``eta`` (Song, Meng & Ermon 2021, eqs. 12 and 16).

    ``x_t = alpha_t x0_hat + sqrt(sigma_t^2 - s_eta^2) eps_hat + s_eta z`` with
    ``s_eta = eta sigma_t sqrt(1 - e^{-2h})``, ``h = lam_t - lam_s`` (eq. 16 for any
    schedule; module docstring). ``eta = 0`` is DDIM (:func:`samplax.solvers.ddim.ddim`,
    equal to 1e-15), ``eta = 1`` DDPM (:func:`ddpm`). ``eta > 1`` is clipped as in
    k-diffusion (``s_eta <= sigma_t``). NFE = ``len(timesteps) - 1``.
    """
    return _build(schedule, timesteps, eta, 1.0)


def ddpm(schedule, timesteps) -> Plan:
    """DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Algorithm 2) on any times.

    Each step samples the posterior ``q(x_t | x_s, x0 = x0_hat)``: mean
    ``alpha_t (1 - e^{-2h}) x0_hat + (sigma_t/sigma_s) e^{-h} x_s`` and standard
    deviation ``sigma_t sqrt(1 - e^{-2h})`` (the "small" variance ``beta_tilde``),
    ``h = lam_t - lam_s``: DDIM with ``eta = 1`` (Song et al. 2021, eq. 16) and
    SDE-DPM-Solver++(1) with ``eta = 1``. On a :class:`~samplax.schedules.DiscreteVP`
    with every training level as a step this is DDPM's sampler verbatim.
    """
    return _build(schedule, timesteps, 1.0, 1.0)


__all__ = ["ancestral_levels", "ddim_eta", "ddpm", "euler_ancestral"]
