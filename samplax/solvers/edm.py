"""Euler and Heun in the EDM view (Karras, Aittala, Aila & Laine 2022, Algorithm 1).

EDM writes the probability-flow ODE for a general scaling ``s(t)`` and noise
level ``sigma(t)`` (EDM eq. 4) and recommends ``s(t) = 1``, ``sigma(t) = t``
(EDM Sec. 3). samplax reaches that choice for *every* noise schedule by a change
of variables: in DESIGN notation ``s(t) = alpha(t)`` and EDM's ``sigma(t)`` is
``sigma_tilde = sigma/alpha = e^{-lam}``, so the scaled state
``x_tilde = x/alpha`` obeys the schedule-free ODE

    d x_tilde / d sigma_tilde = eps_hat = (x_tilde - x0_hat) / sigma_tilde,

which is EDM eq. 4 with ``s = 1``, ``sigma(t) = t``. The solvers here run
Algorithm 1 on ``x_tilde`` with ``sigma_tilde`` as the time and rescale by
``alpha``; for VE/EDM schedules (``alpha = 1``) this is Algorithm 1 verbatim
(and k-diffusion's ``sample_euler``/``sample_heun`` without churn). Euler in this
view is DDIM (EDM Sec. 3; also DPM-Solver-1 of Lu et al. 2022).
"""

from __future__ import annotations

import jax.numpy as jnp

from samplax.solvers._common import check_timesteps, reaches_zero_noise
from samplax.solvers.plan import Lin, Plan, PlanBuilder


def sigma_tilde(schedule, t):
    """EDM noise level of the scaled state: ``sigma_tilde = sigma/alpha = e^{-lam}``.

    ``0`` where ``sigma = 0`` (``lam = inf``).
    """
    return jnp.exp(-schedule.lam(t))


def edm_grid(schedule, ts) -> tuple[list, list, list]:
    """The times ``t_i``, ``alpha(t_i)`` and ``sigma_tilde(t_i)``, as lists of scalars.

    Each is evaluated once per time, as a scalar: eager scalar operations are
    compiled once per shape, so plans of any length build without recompiling.
    """
    times = [ts[i] for i in range(ts.shape[0])]
    alpha = [schedule.alpha(t) for t in times]
    return times, alpha, [sigma_tilde(schedule, t) for t in times]


def _euler_step(b: PlanBuilder, s, t, a_s, a_t, sg_s, sg_t, x: Lin | None = None) -> None:
    """One Euler step ``s -> t`` in the EDM view (EDM Algorithm 1, lines 4-5).

    From the anchor, or from ``x`` (an expression of the anchor, e.g. with the
    churn noise of Algorithm 2 added: it is then evaluated and used in one slot).

    ``x_tilde_t = x_tilde_s + (sigma_tilde_t - sigma_tilde_s) eps_hat`` with
    ``eps_hat = (x_tilde_s - x0_hat)/sigma_tilde_s``, written with the step ratio
    ``r = (sigma_tilde_t - sigma_tilde_s)/sigma_tilde_s`` as
    ``x_tilde_t = x_tilde_s + r (x_tilde_s - x0_hat)``: at ``sigma_t = 0``,
    ``r = -1`` exactly and the step returns ``alpha_t x0_hat`` exactly.
    """
    x = b.x if x is None else x
    xt = x / a_s
    out = b.evaluate(x, s)
    r = (sg_t - sg_s) / sg_s
    b.set_x((xt + (xt - out.d) * r) * a_t)


def _heun_step(b: PlanBuilder, s, t, a_s, a_t, sg_s, sg_t, x: Lin | None = None) -> None:
    """One Heun step ``s -> t`` in the EDM view (EDM Algorithm 1, lines 4-8).

    From the anchor, or from the expression ``x`` (see :func:`_euler_step`).

    ``d_i = eps_hat(x_tilde_s)``, predictor ``x_tilde' = x_tilde_s + dsig d_i``,
    ``d'_i = eps_hat(x_tilde', t) = (x_tilde' - x0_hat')/sigma_tilde_t``,
    ``x_tilde_t = x_tilde_s + dsig (d_i + d'_i)/2`` with
    ``dsig = sigma_tilde_t - sigma_tilde_s``. Needs ``sigma_t > 0``.
    """
    dsig = sg_t - sg_s
    out1 = b.evaluate(b.x if x is None else x, s)
    if x is not None:
        # x becomes the anchor in the first slot, so the second evaluation reads
        # the anchor (a noise draw in x stays within the first slot).
        b.set_x(x)
    xt = b.x / a_s
    d1 = (xt - out1.d) / sg_s
    x_pred = xt + d1 * dsig
    out2 = b.evaluate(x_pred * a_t, t)
    d2 = (x_pred - out2.d) / sg_t
    b.set_x((xt + (d1 + d2) * (0.5 * dsig)) * a_t)


def euler(schedule, timesteps) -> Plan:
    """Euler's method in the EDM view (Karras et al. 2022, Algorithm 1 without lines 6-8).

    For each step ``s -> t`` (DESIGN notation, ``sigma_tilde = sigma/alpha = e^{-lam}``,
    ``x_tilde = x/alpha``)::

        x_tilde_t = x_tilde_s + (sigma_tilde_t - sigma_tilde_s) eps_hat(x_s, s),
        eps_hat = (x_tilde_s - x0_hat)/sigma_tilde_s,     x_t = alpha_t x_tilde_t.

    Algebraically this is DDIM, ``x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) x0_hat``
    with ``h = lam_t - lam_s`` (:func:`samplax.solvers.ddim.ddim`), for any noise
    schedule. First order; exact for point-mass data; a final step to ``sigma = 0``
    returns ``x0_hat`` exactly. NFE = ``len(timesteps) - 1``.

    Args:
        schedule: a :class:`~samplax.schedules.NoiseSchedule`.
        timesteps: strictly decreasing times ``t_0 > ... > t_N`` (``sigma(t_N)`` may be 0).

    Returns:
        A deterministic :class:`~samplax.solvers.plan.Plan`.
    """
    ts = check_timesteps(schedule, timesteps)
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    for i in range(ts.shape[0] - 1):
        _euler_step(b, times[i], times[i + 1], alpha[i], alpha[i + 1], sg[i], sg[i + 1])
    return b.build()


def heun(schedule, timesteps, final_euler: bool = True) -> Plan:
    """Heun's 2nd-order method in the EDM view (Karras et al. 2022, Algorithm 1).

    Each step ``s -> t`` (DESIGN notation, ``dsig = sigma_tilde_t - sigma_tilde_s``,
    ``sigma_tilde = e^{-lam}``, ``x_tilde = x/alpha``)::

        d   = (x_tilde_s - D(x_s, s))/sigma_tilde_s                 (eps_hat at s)
        x'  = x_tilde_s + dsig d                                      (Euler predictor)
        d'  = (x' - D(alpha_t x', t))/sigma_tilde_t                   (eps_hat at t)
        x_tilde_t = x_tilde_s + dsig (d + d')/2,       x_t = alpha_t x_tilde_t.

    With ``final_euler=True`` (default) the last step is a plain Euler step, as
    Algorithm 1 does for a final ``sigma = 0`` (line 6, "if t_{i+1} != 0") and as
    k-diffusion's ``sample_heun`` does: the network is never evaluated at
    ``sigma = 0`` and the last step returns ``x0_hat`` exactly there. NFE = ``2N - 1``
    for ``N = len(timesteps) - 1`` steps (``2N`` with ``final_euler=False``).
    Second order in the step size.

    Args:
        schedule: a :class:`~samplax.schedules.NoiseSchedule`.
        timesteps: strictly decreasing times (``sigma`` of the last may be 0 when
            ``final_euler`` is true).
        final_euler: take the last step with Euler (1 NFE) instead of Heun (2 NFE).
            ``False`` requires a final ``sigma > 0``.

    Returns:
        A deterministic :class:`~samplax.solvers.plan.Plan`.
    """
    if not isinstance(final_euler, bool):
        raise ValueError(f"final_euler must be True or False, got {final_euler!r}")
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    if not final_euler and reaches_zero_noise(schedule, ts[-1]):
        raise ValueError(
            "heun(final_euler=False) would evaluate eps_hat at sigma = 0 on the last "
            "step; use final_euler=True (EDM Algorithm 1) or end at sigma > 0"
        )
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    for i in range(n):
        step = _euler_step if final_euler and i == n - 1 else _heun_step
        step(b, times[i], times[i + 1], alpha[i], alpha[i + 1], sg[i], sg[i + 1])
    return b.build()


__all__ = ["edm_grid", "euler", "heun", "sigma_tilde"]
