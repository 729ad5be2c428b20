"""DPM-Solver++ (Lu et al. 2022b): exponential integrators in data-prediction form.

The coefficient formulas are shared with DPM-Solver (noise form) in
:mod:`samplax.solvers.dpm_solver`; this module only fixes the data form.
"""

from __future__ import annotations

from collections.abc import Sequence

from samplax.solvers.dpm_solver import _build
from samplax.solvers.plan import Plan

__all__ = ["dpm_solver_pp"]


def dpm_solver_pp(
    schedule,
    timesteps,
    order: int = 2,
    method: str = "multistep",
    solver_type: str = "midpoint",
    lower_order_final: bool | int = True,
    afs: bool = False,
    third_order: str = "exact",
    orders: Sequence[int] | None = None,
) -> Plan:
    """DPM-Solver++ (Lu et al. 2022b, "Fast Solver for Guided Sampling of DPMs") as a plan.

    Discretizes the data-form exact solution (eq. 8)
    ``x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lam_s}^{lam_t} e^{lam} x0_hat dlam``
    by Taylor-expanding ``x0_hat`` in ``lam`` (eq. 9):
    ``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_n h^{n+1} phi_{n+1}(-h) x0_hat^{(n)}(lam_s)``,
    ``h = lam_t - lam_s``. Order 1 is DDIM,
    ``x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) x0_hat``. Variants:

    * ``'singlestep'``, order 2 = **2S** (Algorithm 1, ``r = 1/2``): stage
      ``u = (sigma_u/sigma_s) x + alpha_u (1 - e^{-h/2}) m_s`` at
      ``lam_s + h/2``, then ``x_t = (sigma_t/sigma_s) x + alpha_t (1 - e^{-h}) m_u``;
      order 3 = **3S** (stages at ``1/3, 2/3``, official code). NFE = sum of orders.
    * ``'multistep'``, order 2 = **2M** (Algorithm 2), with ``r0 = h_prev/h``,
      ``D1 = (m_0 - m_1)/r0``: ``'midpoint'``:
      ``x_t = (sigma_t/sigma_s) x + alpha_t (1 - e^{-h}) (m_0 + D1/2)``;
      ``'heun'``: ``... + alpha_t (1 - e^{-h}) m_0 + alpha_t ((e^{-h} - 1)/h + 1) D1``.
      Order 3 = **3M** (official code / diffusers), see ``third_order``. NFE = steps.

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times; the last may have ``sigma = 0``
            (EDM, rectified flow): that step is forced to first order, where the
            data form is exact (``x = x0_hat``) and never NaN. With traced times
            the check cannot be made; the last step's higher-order terms are then
            gated on ``isfinite(lam_t)`` (singlestep still spends its stage
            evaluations there).
        order: 1, 2 or 3 (used when ``orders`` is None).
        method: ``'multistep'`` (default) or ``'singlestep'``.
        solver_type: ``'midpoint'`` or ``'heun'`` (diffusers' names; official
            ``'dpmsolver'``/``'taylor'``) for 2M and the singlestep orders 2-3.
        lower_order_final: multistep only: with fewer steps than a threshold the
            last steps use ``min(order, steps left)``. ``True`` = the official
            DPM-Solver threshold (10 steps); an int ``n`` = fewer than ``n`` steps
            (``15`` = diffusers); ``False`` = never.
        afs: analytical first step (USF): the first output is ``x0_hat = 0``
            (``eps_hat = x_T/sigma(t_0)``), saving one NFE; the steps are the
            same, NFE = usual NFE - 1.
        third_order: 3M only. ``D1_0 = (m_0 - m_1)/r0``, ``D1_1 = (m_1 - m_2)/r1``,
            ``D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1) ~ h m'``; the coefficient
            ``alpha_t h phi_3(-h)`` multiplies an estimate of ``h^2 m''``.
            ``'exact'`` (default) uses ``D2 = 2 (D1_0 - D1_1)/(r0 + r1)`` and is
            third order; ``'published'`` uses the official/diffusers/k-diffusion
            ``D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2``, which converges at about
            order 2 only (kept for parity with those implementations).
        orders: optional explicit per-step orders (for multistep step ``i`` at
            most ``i + 1``).

    Returns:
        A :class:`~samplax.solvers.plan.Plan`.
    """
    return _build(
        schedule,
        timesteps,
        data=True,
        order=order,
        method=method,
        orders=orders,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        third_order=third_order,
        afs=afs,
    )
