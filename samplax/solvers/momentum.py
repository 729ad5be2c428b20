"""Momentum for multistep samplers: heavy ball (HB) and generalized heavy ball (GHVB).

Wizadwongsa, Chinchuthakun, Khungurn, Raj & Suwajanakorn, "Diffusion Sampling with
Momentum for Mitigating Divergence Artifacts", ICLR 2024 (arXiv:2307.11118);
official code ``sWizad/momentum-diffusion`` (``momentum_scheduler.py``). Both
methods damp the multistep update direction with an exponential moving average,
which enlarges the stability region at few steps. With ``beta = 1`` each is its
base method exactly (the velocity is the plain update).

In DESIGN notation and the EDM view (``sigma_tilde = sigma/alpha = e^{-lam}``,
``x_tilde = x/alpha``), with ``e_n = eps_hat(x_n, t_n)`` and the PLMS / iPNDM step
``x_tilde_{n+1} = x_tilde_n + (sigma_tilde_{n+1} - sigma_tilde_n) u_n``:

* **HB on PLMS** ("PLMS with HB"): ``u_n = v_n``,
  ``v_n = (1 - beta) v_{n-1} + beta sum_j a_j e_{n-j}`` (Adams-Bashforth weights of
  :data:`samplax.solvers.pndm.AB_FIXED`, warm-up orders ``1, 2, ..``), ``v_{-1} = e_0``.
* **GHVB**: ``v_n = (1 - beta) v_{n-1} + beta e_n`` (``v_{-1} = e_0``)
  and ``u_n = sum_j c_j(beta) v_{n-j}`` with the generalized weights
  (:data:`GHVB_WEIGHTS`, official ``AdamBmixer``), e.g. order 2
  ``[(2 + beta) v_n - (2 - beta) v_{n-1}]/(2 beta)``.
* **HB on DPM-Solver++(2M)** (official ``MomentumDPMSolverMultistepScheduler``):
  ``x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) v``, ``v <- (1 - beta) v +
  beta (m0 + D1/2)`` on the second-order steps (``v`` starts as the first one's
  ``m0 + D1/2``; first-order steps are plain DPM-Solver++).

PLMS here is Adams-Bashforth on ``eps_hat`` in the EDM view with lower-order
warm-up, as the official code implements it: samplax's
:func:`~samplax.solvers.pndm.ipndm` (fixed weights). ``v`` depends on every past
output, so these plans keep the whole history in their buffers (``N`` outputs).
"""

from __future__ import annotations

from samplax.solvers._common import check_timesteps, is_concrete, reaches_zero_noise
from samplax.solvers._stochastic import host_coefficients, sde_coefficients
from samplax.solvers.dpm_solver import multistep_orders
from samplax.solvers.edm import edm_grid
from samplax.solvers.plan import Lin, Plan, PlanBuilder, lin_sum
from samplax.solvers.pndm import AB_FIXED, _transfer
from samplax.solvers.sde_dpm_solver import sde_multistep_update


def _ghvb_weights(order: int, beta):
    """``c_j(beta)``, newest first (official ``AdamBmixer(order, ets, b) / b``)."""
    b = beta
    rows = {
        1: (b,),
        2: ((2 + b) / 2, -(2 - b) / 2),
        3: ((18 + 5 * b) / 12, -(24 - 8 * b) / 12, (6 - b) / 12),
        4: ((46 + 9 * b) / 24, -(78 - 19 * b) / 24, (42 - 5 * b) / 24, -(10 - b) / 24),
    }
    return tuple(c / b for c in rows[order])


GHVB_WEIGHTS = _ghvb_weights


def _check(order, beta, max_order=4):
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"order must be an integer in 1..{max_order}, got {order!r}")
    if is_concrete(beta) and not 0.0 < float(beta) <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")


def _is_one(beta) -> bool:
    return is_concrete(beta) and float(beta) == 1.0


def plms_hb(schedule, timesteps, order: int = 4, beta: float = 0.8) -> Plan:
    """PLMS with Polyak's heavy ball (Wizadwongsa et al. 2023); ``beta = 1`` is
    :func:`samplax.solvers.pndm.ipndm` (``order``, fixed weights) exactly.

    NFE = ``len(timesteps) - 1``; the last time may have ``sigma = 0``.
    """
    _check(order, beta)
    ts = check_timesteps(schedule, timesteps)
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    eps: list[Lin] = []
    v = None
    for i in range(ts.shape[0] - 1):
        xt_s = b.x / alpha[i]
        eps.append(b.evaluate(b.x, times[i]).e)
        k = min(order, i + 1)
        prime = lin_sum(eps[::-1][:k], AB_FIXED[k])
        if v is None or _is_one(beta):
            v = prime  # v_{-1} = e_0 gives v_0 = e_0 = prime_0
        else:
            v = v * (1.0 - beta) + prime * beta
        b.set_x(_transfer(xt_s, sg[i], v, alpha[i + 1], sg[i + 1]))
    return b.build()


def ghvb(schedule, timesteps, order: int = 4, beta: float = 0.8) -> Plan:
    """Generalized heavy ball (GHVB, Wizadwongsa et al. 2023): an order-``order``
    method on the moving average ``v``; ``beta = 1`` is :func:`samplax.solvers.pndm.ipndm`.

    NFE = ``len(timesteps) - 1``; the last time may have ``sigma = 0``.
    """
    _check(order, beta)
    ts = check_timesteps(schedule, timesteps)
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    vs: list[Lin] = []
    for i in range(ts.shape[0] - 1):
        xt_s = b.x / alpha[i]
        e = b.evaluate(b.x, times[i]).e
        if not vs or _is_one(beta):
            v = e
        else:
            v = vs[-1] * (1.0 - beta) + e * beta
        vs.append(v)
        k = min(order, i + 1)
        w = AB_FIXED[k] if _is_one(beta) else _ghvb_weights(k, beta)
        b.set_x(_transfer(xt_s, sg[i], lin_sum(vs[::-1][:k], w), alpha[i + 1], sg[i + 1]))
    return b.build()


def dpm_solver_pp_hb(schedule, timesteps, beta: float = 0.8,
                     lower_order_final: bool | int = True) -> Plan:
    """DPM-Solver++(2M) (midpoint) with heavy-ball momentum (module docstring; official
    ``MomentumDPMSolverMultistepScheduler``); ``beta = 1`` is
    ``dpm_solver_pp(order=2, solver_type="midpoint", lower_order_final=...)``.

    NFE = ``len(timesteps) - 1``; a last step to ``sigma = 0`` is first order.
    """
    _check(2, beta)
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    if n < 2:
        raise ValueError("DPM-Solver++(2M) with momentum needs at least 2 steps")
    orders = multistep_orders(n, 2, lower_order_final)
    if reaches_zero_noise(schedule, ts[-1]):
        orders[-1] = 1
    times = list(ts)
    b = PlanBuilder(schedule)
    hist, lams = [], []
    v = None
    for i in range(n):
        hist.append(b.evaluate(b.x, times[i]).d)
        c = host_coefficients(sde_coefficients, schedule, times[i], times[i + 1], 0.0, 2)
        lams.append(c["lam_s"])
        if orders[i] == 1:
            b.set_x(sde_multistep_update(b.x, hist, lams, c, 1, "midpoint", 2.0))
            continue
        r0 = (lams[-1] - lams[-2]) / c["h"]
        diff = hist[-1] + (hist[-1] - hist[-2]) * (0.5 / r0)  # m0 + D1/2
        v = diff if (v is None or _is_one(beta)) else v * (1.0 - beta) + diff * beta
        b.set_x(c["A"] * b.x + (c["B"] * c["c1"]) * v)
    return b.build()


__all__ = ["GHVB_WEIGHTS", "dpm_solver_pp_hb", "ghvb", "plms_hb"]
