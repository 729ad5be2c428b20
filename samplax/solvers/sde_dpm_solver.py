"""SDE-DPM-Solver++ (Lu et al. 2022b): multistep 2M (midpoint / heun) and 3M with ``eta``.

DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", the section "SDE-DPM-Solver++") solves the
reverse SDE in data form with its linear part exact. With the ``eta`` of
k-diffusion (``sample_dpmpp_2m_sde``/``sample_dpmpp_3m_sde``), which scales the
injected noise between the probability-flow ODE (``eta = 0``) and the published
SDE (``eta = 1``), a step ``s -> t`` (DESIGN notation, ``h = lam_t - lam_s``,
``H = (1 + eta) h``) reads::

    x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t [c1 m0 + c2 D1 + c3 D2]
          + s_noise sigma_t sqrt(1 - e^{-2 eta h}) z,

with ``c1 = 1 - e^{-H}``, ``c2 = H phi_2(-H)``, ``c3 = H phi_3(-H)``
(:func:`samplax.solvers._stochastic.sde_coefficients`), ``m0`` the newest data
prediction, ``D1 ~ h x0'`` and ``D2 ~ h^2 x0''`` the multistep differences of
:func:`samplax.solvers.dpm_solver_pp.dpm_solver_pp` (``r0 = h_prev/h``,
``D1_0 = (m0 - m1)/r0``):

* 2M ``'midpoint'``: ``alpha_t c1 (m0 + D1_0/2)`` (k-diffusion's midpoint SDE);
* 2M ``'heun'``: ``alpha_t (c1 m0 + c2 D1_0)``;
* 3M: ``D1 = D1_0 + r0/(r0 + r1)(D1_0 - D1_1)``, ``D2 = kappa (D1_0 - D1_1)/(r0 + r1)``
  with ``kappa = 2`` (``third_order='exact'``, the second difference ``h^2 x0''``)
  or ``kappa = 1`` (``'published'``: k-diffusion's ``sample_dpmpp_3m_sde``, whose
  ``D2`` is half of it), as in DPM-Solver++'s 3M.

``eta = 0`` gives DPM-Solver++ with the same options exactly (to round-off); a step
to ``sigma = 0`` is the data-form first-order step ``x = x0_hat`` (k-diffusion's
"denoising step"), without noise.
"""

from __future__ import annotations

from samplax.solvers._common import check_timesteps, reaches_zero_noise
from samplax.solvers._stochastic import check_nonneg, host_coefficients, sde_coefficients
from samplax.solvers.dpm_solver import multistep_orders
from samplax.solvers.plan import Lin, Plan, PlanBuilder

SOLVER_TYPES = ("midpoint", "heun")
THIRD_ORDER = ("exact", "published")


def sde_multistep_update(x: Lin, hist: list, lams: list, c: dict, k: int, solver_type: str,
                         kappa: float) -> Lin:
    """The deterministic part of one SDE-DPM-Solver++ step of order ``k`` (module docstring).

    ``hist``: data predictions, newest last; ``lams``: their ``lam``; ``c``: the
    :func:`~samplax.solvers._stochastic.sde_coefficients` of the step.
    """
    m0 = hist[-1]
    new = c["A"] * x + (c["B"] * c["c1"]) * m0
    if k == 1:
        return new
    wB = c["w"] * c["B"]
    r0 = (lams[-1] - lams[-2]) / c["h"]
    D1_0 = (m0 - hist[-2]) * (1.0 / r0)
    if k == 2:
        if solver_type == "midpoint":
            return new + (wB * c["c1"] * 0.5) * D1_0
        return new + (wB * c["c2"]) * D1_0
    r1 = (lams[-2] - lams[-3]) / c["h"]
    D1_1 = (hist[-2] - hist[-3]) * (1.0 / r1)
    D1 = D1_0 + (D1_0 - D1_1) * (r0 / (r0 + r1))
    D2 = (D1_0 - D1_1) * (kappa / (r0 + r1))
    return new + (wB * c["c2"]) * D1 + (wB * c["c3"]) * D2


def sde_dpm_solver_pp(
    schedule,
    timesteps,
    order: int = 2,
    solver_type: str = "midpoint",
    eta: float = 1.0,
    s_noise: float = 1.0,
    lower_order_final: bool | int = True,
    third_order: str = "exact",
) -> Plan:
    """SDE-DPM-Solver++ 2M / 3M (Lu et al. 2022b), multistep, as a stochastic plan.

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times; a last time with ``sigma = 0`` gets
            the first-order step ``x = x0_hat`` (no noise).
        order: 1, 2 (2M) or 3 (3M); warm-up orders ``1, 2, ..``.
        solver_type: ``'midpoint'`` or ``'heun'`` (2M steps).
        eta: noise amount: ``0`` = DPM-Solver++ (ODE), ``1`` = SDE-DPM-Solver++.
        s_noise: multiplier of the injected noise only (k-diffusion's ``s_noise``).
        lower_order_final: as :func:`~samplax.solvers.dpm_solver_pp.dpm_solver_pp`
            (``True``: lower the last orders below 10 steps; an int: below that many).
        third_order: ``'exact'`` (default) or ``'published'`` (module docstring).

    NFE = ``len(timesteps) - 1``. Every draw carries its step ``[t_{i+1}, t_i]`` as
    its Brownian span (:class:`samplax.solvers.noise.BrownianNoise`).
    """
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    if third_order not in THIRD_ORDER:
        raise ValueError(f"third_order must be one of {THIRD_ORDER}, got {third_order!r}")
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    check_nonneg("eta", eta)
    check_nonneg("s_noise", s_noise)
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    if n < order:
        raise ValueError(f"{n} step(s) are too few for multistep order {order}")
    orders = multistep_orders(n, order, lower_order_final)
    if reaches_zero_noise(schedule, ts[-1]):
        orders[-1] = 1
    kappa = 2.0 if third_order == "exact" else 1.0
    times = list(ts)
    b = PlanBuilder(schedule)
    hist: list = []
    lams: list = []
    for i in range(n):
        out = b.evaluate(b.x, times[i])
        hist.append(out.d)
        c = host_coefficients(sde_coefficients, schedule, times[i], times[i + 1], eta, 3)
        lams.append(c["lam_s"])
        x_new = sde_multistep_update(b.x, hist, lams, c, orders[i], solver_type, kappa)
        z = b.noise(span=(times[i + 1], times[i]))
        b.set_x(x_new + z * (c["noise"] * s_noise))
    return b.build()


__all__ = ["sde_dpm_solver_pp", "sde_multistep_update"]
