"""UniPC: the unified predictor-corrector multistep sampler (Zhao et al. 2023).

Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models", NeurIPS 2023 (arXiv:2302.04867); official
code: github.com/wl-zhao/UniPC (``uni_pc.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from samplax.numerics import phis
from samplax.solvers._common import analytic_first_output, check_timesteps, reaches_zero_noise
from samplax.solvers._multistep import (
    check_bool,
    check_choice,
    check_int,
    solve_vandermonde,
    step_orders,
)
from samplax.solvers.plan import Plan, PlanBuilder, lin_sum

VARIANTS = ("bh1", "bh2", "vary_coeff")


def unipc(
    schedule,
    timesteps,
    order: int = 2,
    variant: str = "bh1",
    predict_x0: bool = True,
    corrector: bool | Sequence[bool] = True,
    lower_order_final: bool = True,
    afs: bool = False,
) -> Plan:
    r"""Multistep UniPC-p: the UniP-p predictor with the UniC corrector.

    Zhao et al. 2023 (UniPC), Sec. 3: the corrector UniC-p (Theorem 3.1) and the
    predictor UniP-p (Corollary 3.2), in the multistep form of the official
    ``uni_pc.py`` (``multistep_uni_pc_bh_update`` and ``sample``). In
    DESIGN notation, a step ``s -> t`` with ``h = lam_t - lam_s`` and model outputs
    ``m`` (``x0_hat`` in the data form, ``eps_hat`` in the noise form) at earlier
    times with ratios ``r_m = (lam_m - lam_s)/h < 0`` and differences
    ``D_m = (m_m - m_0)/r_m`` reads, in the data form (``hh = -h``)::

        x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{hh} - 1) m_0
              - alpha_t B(h) sum_m a_m D_m

    and in the noise form (``hh = h``) ``x_t = (alpha_t/alpha_s) x_s -
    sigma_t (e^{hh} - 1) m_0 - sigma_t B(h) sum_m a_m D_m``. The weights solve
    ``R a = g / B(h)`` with ``R_{k,m} = r_m^{k-1}`` and
    ``g_k = hh phi_{k+1}(hh) k!`` (k = 1..), so ``B(h) a = R^{-1} g`` does not
    depend on ``B``; only the one-weight cases use the paper's simplification
    ``a = 1/2`` and so depend on ``B(h) = hh`` (``'bh1'``) or ``e^{hh} - 1``
    (``'bh2'``).

    *UniP-p* (predictor) uses ``m_0`` and ``p - 1`` earlier outputs; order p.
    *UniC-p* (corrector) adds the output ``m_t`` of the network at the predicted
    point, with ``r = 1`` and ``D = m_t - m_0``, and replaces the predicted
    ``x_t`` by the corrected one; order p + 1. The output at the *predicted*
    point stays in the history for the next step, so the corrector costs no NFE
    (each NFE slot evaluates at the predicted point, then moves the anchor to
    the corrected value). The last step has no corrector (it would need one more
    evaluation), so NFE = ``len(timesteps) - 1`` (one less with ``afs``).

    Orders ramp up ``1, 2, .., p`` over the first steps (the official warm-up,
    with the corrector on); with ``lower_order_final`` the last steps ramp down
    as ``min(p, steps left)`` (the official code always does this). A last step
    that reaches ``sigma = 0`` (``lam = inf``, where every ``r_m`` is 0) is first
    order: both forms return ``alpha_t x0_hat`` (the finite limit; ``x0_hat`` for
    ``alpha_t = 1``). (diffusers' bh1 UniPC returns NaN there:
    ``B(h) = -inf`` times a zero residual.) When the times are traced (e.g. under
    ``jax.grad``) the last step selects between both with ``jnp.where``, so it
    stays finite either way.

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times ``t_0 > .. > t_N``; N steps.
        order: predictor order p >= 1 (1-3 are the usual choices; higher orders
            are built by the same formulas).
        variant: ``'bh1'`` (``B(h) = hh``, recommended below ~10 steps
            unconditional), ``'bh2'`` (``B(h) = e^{hh} - 1``), or ``'vary_coeff'``
            (UniPC_v: every weight from the exact solve, no ``a = 1/2``
            simplification). This is the consistent form of the official
            ``multistep_uni_pc_vary_update``: that corrector pairs the rows of
            ``C^{-1}`` with the wrong phi terms and converges at first order
            only (checked against a re-implementation), so samplax does not
            reproduce it.
        predict_x0: data-prediction form (default, UniPC with DPM-Solver++
            style updates) or noise-prediction form.
        corrector: apply UniC after each step but the last: a bool, or one bool
            per step (``N - 1`` entries, or ``N`` with the last ``False``).
        lower_order_final: lower the order over the last ``p - 1`` steps. On by
            default, as in the official code (which always does it; diffusers
            does it below 15 steps).
        afs: analytical first step (USF, Liu et al. 2023): use ``x0_hat = 0``,
            ``eps_hat = x_T/sigma(t_0)`` at ``t_0`` instead of a network call.

    Returns:
        A deterministic :class:`~samplax.solvers.plan.Plan`.
    """
    ts = check_timesteps(schedule, timesteps)
    n = int(ts.shape[0]) - 1
    p = check_int("order", order, 1)
    variant = check_choice("variant", variant, VARIANTS)
    predict_x0 = check_bool("predict_x0", predict_x0)
    lower_order_final = check_bool("lower_order_final", lower_order_final)
    afs = check_bool("afs", afs)
    use_corrector = _corrector_flags(corrector, n)
    if afs and n < 2:
        raise ValueError("afs replaces the first network call: it needs at least 2 steps")

    return build_unipc(schedule, ts, step_orders(n, p, lower_order_final), variant,
                       predict_x0, use_corrector, afs=afs)


def build_unipc(schedule, ts, orders, variant, predict_x0, use_corrector, *, afs=False,
                compensate=None) -> Plan:
    """UniPC's plan from validated times and per-step orders and corrector flags.

    ``compensate(i, t, history) -> Lin``, optional: a replacement for the newest
    model output before step ``i`` (``history`` newest last, ``t`` the times), as
    DC-Solver's dynamic compensation does (:mod:`samplax.solvers.dc_solver`).
    """
    n = int(ts.shape[0]) - 1
    orders = list(orders)
    if reaches_zero_noise(schedule, ts[-1]):
        orders[-1] = 1
    t = list(ts)  # scalars (one unstack instead of N slices)
    # traced option flags: one compiled step function per order serves every variant
    flags = jnp.array([variant == "bh1", variant != "vary_coeff", predict_x0])

    b = PlanBuilder(schedule)
    first = analytic_first_output(b, t[0]) if afs else b.evaluate(b.x, t[0])
    history = [first.d if predict_x0 else first.e]
    for i in range(n):
        if compensate is not None:
            history[-1] = compensate(i, t, history)
        k = orders[i]
        ms = history[: -k - 1 : -1]  # m_0 (newest), m_1, .., m_{k-1}
        t_old = tuple(t[i - m] for m in range(1, k))
        pw, cw = _step_weights(schedule, t[i], t[i + 1], t_old, flags)
        pred = lin_sum([b.x, *ms], pw)
        if i == n - 1:
            b.set_x(pred)
            break
        out = b.evaluate(pred, t[i + 1])
        m_new = out.d if predict_x0 else out.e
        b.set_x(lin_sum([b.x, *ms, m_new], cw) if use_corrector[i] else pred)
        history.append(m_new)
    return b.build()


@eqx.filter_jit
def _step_weights(schedule, s, t, t_old, flags):
    """Weights of one step ``s -> t`` of order ``k = len(t_old) + 1``.

    Returns the predictor weights of ``(x_s, m_0, m_1, .., m_{k-1})`` and the
    corrector weights of ``(x_s, m_0, .., m_{k-1}, m_t)``, where ``m_j`` is the
    output at ``t_old[j - 1]`` (``m_0`` at ``s``). ``flags = (B(h) = hh, a = 1/2
    simplification, data form)`` as traced booleans. A pure scalar function of the
    times, compiled once per order.
    """
    bh1, simplified, data_form = flags
    k = len(t_old) + 1
    lam_s, lam_t = schedule.lam(s), schedule.lam(t)
    a_s, a_t = schedule.alpha(s), schedule.alpha(t)
    s_s, s_t = schedule.sigma(s), schedule.sigma(t)
    # Only a last step can reach sigma = 0 (lam_t = inf). The first-order weights
    # use their finite limits there; the higher-order ones see a finite stand-in
    # for h and are then replaced by the first-order ones, so values and
    # gradients stay finite (also for traced times).
    at_zero = jnp.isinf(lam_t)
    h_raw = lam_t - lam_s
    h = jnp.where(at_zero, 1.0, h_raw)
    # data form: x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) ...
    # noise form: x_t = (alpha_t/alpha_s) x_s - sigma_t (e^{h} - 1) m_0 - sigma_t B(h) ...
    hh = jnp.where(data_form, -h, h)
    scale = jnp.where(data_form, a_t, s_t)
    wx = jnp.where(data_form, s_t / s_s, a_t / a_s)
    base = jnp.where(
        data_form,
        -a_t * jnp.expm1(-h_raw),  # -> alpha_t at sigma_t = 0
        -jnp.where(at_zero, a_t * jnp.exp(-lam_s), s_t * jnp.expm1(h)),  # not 0 * inf
    )

    r = [(schedule.lam(tm) - lam_s) / h for tm in t_old]  # r_m < 0
    ph = phis(hh, k + 1)  # ph[j] = phi_{j+1}(hh)
    g = [hh * ph[j] * math.factorial(j) for j in range(1, k + 1)]  # B(h) R a = g
    half_b = 0.5 * jnp.where(bh1, hh, jnp.expm1(hh))  # B(h) a for the one-weight cases

    # predictor: x = wx x_s + base m_0 - scale sum_m c_m (m_m - m_0)/r_m, c = B(h) a
    c_p = solve_vandermonde(r, g[: k - 1])
    if k == 2:
        c_p = [jnp.where(simplified, half_b, c_p[0])]
    pred = [wx, base + scale * sum(c / rm for c, rm in zip(c_p, r, strict=True))]
    pred += [-scale * c / rm for c, rm in zip(c_p, r, strict=True)]
    if k > 1:
        first = [wx, base] + [0.0] * (k - 1)
        pred = [jnp.where(at_zero, f, w) for f, w in zip(first, pred, strict=True)]
    # corrector: the new output m_t enters with r = 1 and D = m_t - m_0
    c_c = solve_vandermonde([*r, 1.0], g)
    if k == 1:
        c_c = [jnp.where(simplified, half_b, c_c[0])]
    corr = [wx, base + scale * (sum(c / rm for c, rm in zip(c_c, r)) + c_c[-1])]
    corr += [-scale * c / rm for c, rm in zip(c_c, r)] + [-scale * c_c[-1]]
    return tuple(pred), tuple(corr)


def _corrector_flags(corrector, n) -> list[bool]:
    """One flag per step; the last step never corrects (it would cost an extra NFE)."""
    if isinstance(corrector, bool | np.bool_):
        return [bool(corrector)] * (n - 1) + [False]
    if isinstance(corrector, str) or not isinstance(corrector, Sequence | np.ndarray):
        raise ValueError(
            f"corrector must be a bool or a sequence of bools (one per step), got {corrector!r}"
        )
    flags = list(corrector)
    if not all(isinstance(f, bool | np.bool_) for f in flags):
        raise ValueError(f"corrector entries must be bools, got {flags!r}")
    flags = [bool(f) for f in flags]
    if len(flags) == n - 1:
        flags.append(False)
    elif len(flags) != n:
        raise ValueError(
            f"corrector needs one flag per step ({n - 1} or {n} entries for {n} steps), "
            f"got {len(flags)}"
        )
    if flags[-1]:
        raise ValueError(
            "no corrector on the last step: it would need an extra network evaluation "
            "(pass False as the last flag, or only the first N - 1 flags)"
        )
    return flags
