"""DPM-Solver (Lu et al. 2022): exponential integrators in noise-prediction form.

Notation of DESIGN.md: ``x_t = alpha_t x0 + sigma_t eps``, ``lam = log(alpha/sigma)``,
a step ``s -> t`` has ``h = lam_t - lam_s > 0``; ``eps_hat`` / ``x0_hat`` are the
model's noise / data predictions. ``phi_k`` are the functions of
:func:`samplax.numerics.phi`.

Both DPM-Solver (noise form, this module) and DPM-Solver++ (data form,
:mod:`samplax.solvers.dpm_solver_pp`) truncate the Taylor expansion in ``lam`` of
the exact solution; in one shape shared by both families::

    x_t = A x_s + B [c_1(h) F_0 + c_2(h) D_1 + c_3(h) D_2],   D_1 ~ h F', D_2 ~ h^2 F''

* noise form (DPM-Solver, eq. 3.6): ``F = eps_hat``, ``A = alpha_t/alpha_s``,
  ``B = -sigma_t``, ``c_k = h phi_k(h)`` (``c_1 = e^h - 1``);
* data form (DPM-Solver++, eq. 9): ``F = x0_hat``, ``A = sigma_t/sigma_s``,
  ``B = alpha_t``, ``c_k = h phi_k(-h)`` (``c_1 = 1 - e^{-h}``).

Every coefficient is a ``jnp`` scalar function of the times, so plans are
differentiable with respect to the timesteps.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.numerics import phi
from samplax.solvers._common import (
    analytic_first_output,
    check_timesteps,
    is_concrete,
    reaches_zero_noise,
)
from samplax.solvers._multistep import check_bool
from samplax.solvers.plan import Plan, PlanBuilder

__all__ = ["dpm_solver", "dpm_solver_fast", "dpm_solver_fast_orders", "multistep_orders"]

METHODS = ("singlestep", "multistep")
SOLVER_TYPES = ("midpoint", "heun")
THIRD_ORDER = ("exact", "published")
# lower_order_final=True lowers the last orders when there are fewer steps than this:
# the official DPM-Solver code uses 10; diffusers uses 15 (pass lower_order_final=15).
LOWER_ORDER_FINAL_BELOW = 10
# stage positions r_j of the singlestep solvers (DPM-Solver-2: 1/2; DPM-Solver-3: 1/3, 2/3)
_R = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


# --------------------------------------------------------------------------------------
# Coefficients: pure jnp functions of the times
# --------------------------------------------------------------------------------------


def _c(k: int, h, data: bool):
    """``c_k = h phi_k(-h)`` (data form) or ``h phi_k(h)`` (noise form).

    ``c_1`` is written with ``expm1`` so that the data form stays exact at
    ``h = inf`` (``c_1 = 1``); ``k >= 2`` only ever sees finite ``h``.
    """
    if k == 1:
        return -jnp.expm1(-h) if data else jnp.expm1(h)
    return h * phi(k, -h if data else h)


def _step_coefficients(schedule, s, t, data: bool) -> dict:
    """Every scalar a step ``s -> t`` of any order needs (stages: ``_stage_coefficients``).

    ``A = sigma_t/sigma_s`` (data) or ``alpha_t/alpha_s`` (noise), ``B = alpha_t`` or
    ``-sigma_t``, ``c1 = c_1(h)``. Higher-order terms use ``c{j}h = c_j(hh)`` and the
    weight ``w``: on a step that reaches ``sigma = 0`` (``h = inf``) they get the
    finite stand-in ``hh = 1`` and ``w = 0`` (double-where: values and derivatives,
    forward and reverse, stay finite), and singlestep stages collapse onto ``s``
    (``hs = 0``), so the step is the exact first-order data-form step even when the
    times are traced and its order cannot be lowered statically. (One function for
    all orders: a handful of compilations serve every plan; the unused scalars cost
    nothing at run time.)
    """
    sch = schedule
    lam_s = sch.lam(s)
    # Whether the step reaches sigma = 0, from primal values only. Every formula
    # then sees t_eff = s there (finite; double-where), so that no derivative of
    # lam or sigma is ever taken at sigma = 0, where they are infinite (0/0 = NaN
    # even in a zero tangent or cotangent).
    fin = jnp.isfinite(sch.lam(jax.lax.stop_gradient(t)))
    t_eff = jnp.where(fin, t, s)
    h = sch.lam(t_eff) - lam_s  # = lam_t - lam_s on finite steps, 0 otherwise
    hh = jnp.where(fin, h, jnp.ones_like(h))
    hs = jnp.where(fin, h, jnp.zeros_like(h))
    lin = sch.sigma if data else sch.alpha
    lin_s = lin(s)
    if data:
        # limits at sigma_t = 0, h = inf: A = 0, c_1 = 1: x_t = alpha_t x0_hat
        A = jnp.where(fin, lin(t_eff) / lin_s, 0.0)
        B = sch.alpha(t)
        c1 = jnp.where(fin, _c(1, h, data), 1.0)
    else:
        # sigma_t (e^h - 1) -> alpha_t sigma_s/alpha_s as sigma_t -> 0 (sigma_t e^h is
        # alpha_t e^{-lam_s}): the step tends to alpha_t/alpha_s (x_s - sigma_s eps_hat)
        # = alpha_t x0_hat, exact and finite; written as B c_1 with c_1 = 1
        A = lin(t) / lin_s
        B = jnp.where(fin, -sch.sigma(t_eff), -sch.alpha(t) * sch.sigma(s) / lin_s)
        c1 = jnp.where(fin, _c(1, h, data), 1.0)
    out = dict(lam_s=lam_s, hh=hh, w=jnp.where(fin, 1.0, 0.0), A=A, B=B, c1=c1,
               c1h=_c(1, hh, data), hs=hs)
    for j in (2, 3):
        out[f"c{j}h"] = _c(j, hh, data)
    return out


def _stage_coefficients(schedule, s, lam_s, hs, data: bool) -> dict:
    """The stages of singlestep steps of orders 2 and 3 from ``s``, ``h = hs``.

    Stage ``j`` of an order-``k`` step sits at ``t{k}{j} = t_of_lam(lam_s + r_j h)``
    (``r = 1/2``; ``1/3, 2/3``) and is reached by ``A{k}{j} x + B{k}{j} (...)``.
    """
    sch = schedule
    lin = sch.sigma if data else sch.alpha
    B = sch.alpha if data else (lambda u: -sch.sigma(u))
    lin_s = lin(s)
    out = {}
    for k, rs in _R.items():
        for j, r in enumerate(rs):
            t_r = sch.t_of_lam(lam_s + r * hs)
            out[f"t{k}{j}"] = t_r
            out[f"A{k}{j}"] = lin(t_r) / lin_s
            out[f"B{k}{j}"] = B(t_r)
            out[f"c1_{k}{j}"] = _c(1, r * hs, data)
    out["c2_31"] = _c(2, _R[3][1] * hs, data)
    return out


# One compiled call per step: scalar shapes, so one compilation serves plans of
# every length (eager per-op dispatch of the same formulas is ~10x slower).
_step_coefficients_jit = eqx.filter_jit(_step_coefficients)
_stage_coefficients_jit = eqx.filter_jit(_stage_coefficients)


def _coefficients(schedule, s, t, data, stages: bool) -> dict:
    c = _step_coefficients_jit(schedule, s, t, data)
    if stages:
        c = {**c, **_stage_coefficients_jit(schedule, s, c["lam_s"], c["hs"], data)}
    # Concrete values move to the host once, so the per-step Lin algebra does not
    # dispatch a device op per scalar; traced values (gradients) stay traced.
    return jax.device_get(c) if is_concrete(c["A"]) else c


# --------------------------------------------------------------------------------------
# Option checks and order schedules
# --------------------------------------------------------------------------------------


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {name}={value!r}; expected one of {list(allowed)}")


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | jnp.integer)


def _check_order(order, name="order"):
    if not _is_int(order) or not 1 <= order <= 3:
        raise ValueError(f"{name} must be 1, 2 or 3, got {order!r}")
    return int(order)


def _check_fast_budget(nfe, order):
    if not _is_int(nfe):
        raise TypeError(f"nfe must be an integer (the number of network evaluations), "
                        f"got {nfe!r} ({type(nfe).__name__})")
    if nfe < order:
        raise ValueError(
            f"nfe={nfe!r} is too small for DPM-Solver-fast of order {order}: need nfe >= {order}"
        )
    return int(nfe)


def _lower_order_threshold(lower_order_final) -> int:
    if isinstance(lower_order_final, bool):
        return LOWER_ORDER_FINAL_BELOW if lower_order_final else 0
    if isinstance(lower_order_final, int) and lower_order_final >= 0:
        return lower_order_final
    raise ValueError(
        "lower_order_final must be a bool or a non-negative int (a step-count threshold), "
        f"got {lower_order_final!r}"
    )


def multistep_orders(n_steps: int, order: int, lower_order_final=True) -> list[int]:
    """Per-step orders of a multistep solver: warm-up ``1, 2, ..`` then ``order``.

    With ``lower_order_final`` (and fewer than its threshold steps) the last steps
    use ``min(order, steps left)`` (official DPM-Solver ``sample(method='multistep')``;
    diffusers' ``lower_order_final``/``lower_order_second``).
    """
    below = _lower_order_threshold(lower_order_final)
    orders = []
    for i in range(n_steps):
        k = min(order, i + 1)
        if n_steps < below:
            k = min(k, n_steps - i)
        orders.append(k)
    return orders


def dpm_solver_fast_orders(nfe: int, order: int = 3) -> list[int]:
    """DPM-Solver-fast's split of an NFE budget into singlestep orders (Lu et al. 2022).

    order 3, ``K = nfe // 3 + 1``: ``nfe % 3 == 0`` -> ``[3]*(K-2) + [2, 1]``;
    ``== 1`` -> ``[3]*(K-1) + [1]``; ``== 2`` -> ``[3]*(K-1) + [2]``. Order 2:
    ``[2]*(nfe//2)`` plus ``[1]`` if ``nfe`` is odd. Order 1: ``[1]*nfe``. The
    orders sum to ``nfe`` (official code, ``get_orders_and_timesteps_for_singlestep_solver``).
    """
    order = _check_order(order)
    nfe = _check_fast_budget(nfe, order)
    if order == 3:
        K = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (K - 1) + [1]
        return [3] * (K - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


def _resolve_orders(n_steps, order, orders, method, lower_order_final):
    if orders is None:
        order = _check_order(order)
        if method == "multistep":
            # Fewer steps than `order` never get past the warm-up (as in diffusers;
            # the official code asserts steps >= order instead).
            return multistep_orders(n_steps, order, lower_order_final)
        return [order] * n_steps
    orders = [_check_order(k, "every entry of orders") for k in orders]
    if len(orders) != n_steps:
        raise ValueError(
            f"orders has {len(orders)} entries but timesteps define {n_steps} steps"
        )
    if method == "multistep":
        for i, k in enumerate(orders):
            if k > i + 1:
                raise ValueError(
                    f"multistep step {i} cannot have order {k}: only {i + 1} model "
                    "output(s) are available there (warm up with lower orders)"
                )
    return orders


# --------------------------------------------------------------------------------------
# The shared plan constructor
# --------------------------------------------------------------------------------------


def _build(
    schedule,
    timesteps,
    *,
    data: bool,
    order,
    method: str,
    orders: Sequence[int] | None,
    solver_type: str,
    lower_order_final,
    third_order: str,
    afs: bool,
) -> Plan:
    _check_choice("method", method, METHODS)
    _check_choice("solver_type", solver_type, SOLVER_TYPES)
    _check_choice("third_order", third_order, THIRD_ORDER)
    afs = check_bool("afs", afs)
    ts = check_timesteps(schedule, timesteps)
    n_steps = ts.shape[0] - 1
    orders = _resolve_orders(n_steps, order, orders, method, lower_order_final)

    # A step that reaches sigma = 0 (lam = inf) can only be first order: every
    # higher-order term divides by h = inf. Known only for concrete times; with
    # traced times the coefficients gate those terms instead (_step_coefficients).
    if reaches_zero_noise(schedule, ts[-1]):
        orders[-1] = 1

    nfe = (sum(orders) if method == "singlestep" else n_steps) - int(afs)
    if nfe < 1:
        raise ValueError(
            "afs=True with a single first-order step leaves no network evaluation; "
            "use at least two steps or afs=False"
        )

    F = (lambda out: out.d) if data else (lambda out: out.e)
    kappa = 2.0 if third_order == "exact" else 1.0
    single = method == "singlestep"
    b = PlanBuilder(schedule)
    first = analytic_first_output(b, ts[0]) if afs else None
    hist: list = []
    lams: list = []
    for i in range(n_steps):
        out = first if (i == 0 and first is not None) else b.evaluate(b.x, ts[i])
        hist.append(F(out))
        c = _coefficients(schedule, ts[i], ts[i + 1], data, single and orders[i] > 1)
        lams.append(c["lam_s"])
        if single:
            new = _singlestep(b, b.x, hist[-1], c, orders[i], solver_type, F)
        else:
            new = _multistep(b.x, hist, lams, c, orders[i], solver_type, kappa)
        b.set_x(new)
    return b.build()


def _multistep(x, hist, lam, c, k, solver_type, kappa):
    """One multistep update ``t_i -> t_{i+1}`` of order ``k`` from the last ``k`` outputs.

    Official DPM-Solver code, ``multistep_dpm_solver_{first,second,third}_update``
    (DPM-Solver++ 2M is its Algorithm 2): with ``r0 = h_0/h``, ``r1 = h_1/h``,
    ``D1_0 = (F_0 - F_1)/r0``, ``D1_1 = (F_1 - F_2)/r1``:

    * order 2, midpoint: ``A x + B c_1 (F_0 + D1_0/2)``; heun: ``A x + B (c_1 F_0 + c_2 D1_0)``;
    * order 3: ``D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1)``,
      ``D2 = kappa (D1_0 - D1_1)/(r0 + r1)`` and ``A x + B (c_1 F_0 + c_2 D1 + c_3 D2)``.
      ``D2`` must approximate ``h^2 F''``: the published code takes ``kappa = 1``,
      which is ``h^2 F''/2`` and makes the method second order; ``kappa = 2`` is
      third order.
    """
    F0 = hist[-1]
    B, wB = c["B"], c["w"] * c["B"]
    new = c["A"] * x + (B * c["c1"]) * F0
    if k == 1:
        return new
    r0 = (lam[-1] - lam[-2]) / c["hh"]
    D1_0 = (F0 - hist[-2]) * (1.0 / r0)
    if k == 2:
        if solver_type == "midpoint":
            return new + (wB * c["c1h"] * 0.5) * D1_0
        return new + (wB * c["c2h"]) * D1_0
    r1 = (lam[-2] - lam[-3]) / c["hh"]
    D1_1 = (hist[-2] - hist[-3]) * (1.0 / r1)
    D1 = D1_0 + (D1_0 - D1_1) * (r0 / (r0 + r1))
    D2 = (D1_0 - D1_1) * (kappa / (r0 + r1))
    return new + (wB * c["c2h"]) * D1 + (wB * c["c3h"]) * D2


def _singlestep(b, x, Fs, c, k, solver_type, F):
    """One singlestep update ``s -> t`` of order ``k`` (stages at ``lam_s + r h``).

    DPM-Solver (Lu et al. 2022) eq. 3.7 (order 1), Algorithm 1 (DPM-Solver-2,
    ``r1 = 1/2``), Algorithm 2 (DPM-Solver-3, ``r1 = 1/3``, ``r2 = 2/3``); the data
    form is DPM-Solver++ (Lu et al. 2022b) Algorithm 1 (2S) and its order-3 analogue
    from the official code. With ``s_j = t(lam_s + r_j h)`` (``schedule.t_of_lam``):

    * ``u_1 = A(s, s_1) x + B(s_1) c_1(r_1 h) F_s``;
    * order 2, midpoint: ``x_t = A x + B c_1(h) (F_s + (F_1 - F_s)/(2 r_1))``;
      heun: ``x_t = A x + B (c_1(h) F_s + c_2(h) (F_1 - F_s)/r_1)``;
    * order 3: ``u_2 = A(s, s_2) x + B(s_2) (c_1(r_2 h) F_s + (r_2/r_1) c_2(r_2 h) (F_1 - F_s))``;
      midpoint (the paper's DPM-Solver-3): ``x_t = A x + B (c_1 F_s + c_2 (F_2 - F_s)/r_2)``;
      heun ("taylor" in the official code): ``D1 = (r_2 D1_0 - r_1 D1_1)/(r_2 - r_1)``,
      ``D2 = 2 (D1_1 - D1_0)/(r_2 - r_1)`` with ``D1_0 = (F_1 - F_s)/r_1``,
      ``D1_1 = (F_2 - F_s)/r_2``, and ``x_t = A x + B (c_1 F_s + c_2 D1 + c_3 D2)``.
    """
    new = c["A"] * x + (c["B"] * c["c1"]) * Fs
    if k == 1:
        return new
    wB = c["w"] * c["B"]
    r1 = _R[k][0]
    # (x stays valid across the stage evaluations: only set_x changes the anchor)
    u1 = c[f"A{k}0"] * x + (c[f"B{k}0"] * c[f"c1_{k}0"]) * Fs
    F1 = F(b.evaluate(u1, c[f"t{k}0"]))
    if k == 2:
        if solver_type == "midpoint":
            return new + (wB * c["c1h"] * (0.5 / r1)) * (F1 - Fs)
        return new + (wB * c["c2h"] * (1.0 / r1)) * (F1 - Fs)
    r2 = _R[3][1]
    u2 = (
        c["A31"] * x
        + (c["B31"] * c["c1_31"]) * Fs
        + (c["B31"] * c["c2_31"] * (r2 / r1)) * (F1 - Fs)
    )
    F2 = F(b.evaluate(u2, c["t31"]))
    if solver_type == "midpoint":
        return new + (wB * c["c2h"] * (1.0 / r2)) * (F2 - Fs)
    D1_0 = (F1 - Fs) * (1.0 / r1)
    D1_1 = (F2 - Fs) * (1.0 / r2)
    D1 = (D1_0 * r2 - D1_1 * r1) * (1.0 / (r2 - r1))
    D2 = (D1_1 - D1_0) * (2.0 / (r2 - r1))
    return new + (wB * c["c2h"]) * D1 + (wB * c["c3h"]) * D2


# --------------------------------------------------------------------------------------
# Public constructors
# --------------------------------------------------------------------------------------


def dpm_solver(
    schedule,
    timesteps,
    order: int = 2,
    method: str = "singlestep",
    orders: Sequence[int] | None = None,
    lower_order_final: bool | int = True,
    afs: bool = False,
    solver_type: str = "midpoint",
    third_order: str = "exact",
) -> Plan:
    """DPM-Solver (Lu et al. 2022, NeurIPS), noise-prediction form, as a plan.

    Discretizes the exact solution (Prop. 3.1, eq. 3.4)
    ``x_t = (alpha_t/alpha_s) x_s - alpha_t int_{lam_s}^{lam_t} e^{-lam} eps_hat dlam``
    by Taylor-expanding ``eps_hat`` in ``lam`` (eq. 3.6):
    ``x_t = (alpha_t/alpha_s) x_s - sigma_t sum_n h^{n+1} phi_{n+1}(h) eps_hat^{(n)}(lam_s)``.
    Order 1 (eq. 3.7) is DDIM: ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_hat``.

    Args:
        schedule: the noise schedule (``alpha``, ``sigma``, ``lam``, ``t_of_lam``).
        timesteps: strictly decreasing times. For ``'singlestep'`` they are the
            outer step boundaries; intermediate stages sit at ``t_of_lam(lam_s + r h)``
            (``r = 1/2`` for DPM-Solver-2, Algorithm 1; ``1/3, 2/3`` for
            DPM-Solver-3, Algorithm 2). For ``'multistep'`` the model is evaluated
            at every time but the last.
        order: 1, 2 or 3 (used when ``orders`` is None).
        method: ``'singlestep'`` (NFE = sum of orders) or ``'multistep'``
            (official code's ``multistep_dpm_solver_update``; NFE = number of
            steps, warm-up orders ``1, 2, ..``, so fewer than ``order`` steps never
            reach ``order``).
        orders: optional explicit per-step orders (one per step, each 1..3; for
            multistep step ``i`` may use at most ``i + 1``).
        lower_order_final: multistep only: with fewer steps than a threshold the
            last steps use ``min(order, steps left)``. ``True`` uses the official
            DPM-Solver threshold (10 steps), an int ``n`` means "fewer than ``n``
            steps" (``15`` matches diffusers), ``False`` never. Ignored by
            singlestep (choose ``orders``, or :func:`dpm_solver_fast`).
        afs: analytical first step (USF, Liu et al. 2023): the first model output
            is taken as ``eps_hat = x_T/sigma(t_0)`` (``x0_hat = 0``), saving one
            NFE. The steps are unchanged: NFE = usual NFE - 1.
        solver_type: ``'midpoint'`` (the paper's DPM-Solver-2/3, official
            ``'dpmsolver'``) or ``'heun'`` (official ``'taylor'``), for the
            second-order multistep step and the singlestep orders 2-3.
        third_order: multistep order 3 only: ``'exact'`` (default, truly third
            order) or ``'published'``, the official code's ``D2`` (half the second
            difference it needs), which converges at about order 2; for parity.

    A last step to ``sigma = 0`` is first order and takes the update's finite
    limit ``sigma_t (e^h - 1) -> alpha_t sigma_s/alpha_s``, i.e.
    ``x_t = alpha_t x0_hat`` (exact; the same with traced times). Singlestep
    solvers then skip that step's stage evaluations.

    Returns:
        A :class:`~samplax.solvers.plan.Plan`.
    """
    return _build(
        schedule,
        timesteps,
        data=False,
        order=order,
        method=method,
        orders=orders,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        third_order=third_order,
        afs=afs,
    )


def _logsnr_uniform(schedule, n_steps, t_start, t_end):
    lam = jnp.linspace(schedule.lam(t_start), schedule.lam(t_end), n_steps + 1)
    ts = schedule.t_of_lam(lam)
    return ts.at[0].set(t_start).at[-1].set(t_end)


def dpm_solver_fast(
    schedule,
    nfe: int,
    order: int = 3,
    t_start=None,
    t_end=None,
    *,
    afs: bool = False,
    solver_type: str = "midpoint",
) -> Plan:
    """DPM-Solver-fast (Lu et al. 2022): singlestep DPM-Solver-1/2/3, exactly ``nfe`` NFE.

    Splits the budget into singlestep orders with :func:`dpm_solver_fast_orders`
    (order 3: ``K = nfe//3 + 1`` outer steps, ``[3]*(K-2) + [2, 1]`` etc.) on
    ``K`` logSNR-uniform outer steps from ``t_start`` (default ``schedule.t_max``)
    to ``t_end`` (default ``schedule.t_min``), as the official code does for
    ``skip_type='logSNR'``. With ``afs=True`` the split is made for ``nfe + 1``
    evaluations of which the first is analytical, so the plan still costs
    exactly ``nfe``.
    """
    order = _check_order(order)
    nfe = _check_fast_budget(nfe, order)
    afs = check_bool("afs", afs)
    orders = dpm_solver_fast_orders(nfe + int(afs), order)
    t_start = schedule.t_max if t_start is None else t_start
    t_end = schedule.t_min if t_end is None else t_end
    if reaches_zero_noise(schedule, t_end):
        raise ValueError(
            "dpm_solver_fast spaces its steps uniformly in log-SNR, which needs "
            "sigma(t_end) > 0; pass times to dpm_solver(..., method='singlestep', "
            "orders=dpm_solver_fast_orders(nfe, order)) to end at sigma = 0"
        )
    ts = _logsnr_uniform(schedule, len(orders), t_start, t_end)
    return dpm_solver(
        schedule, ts, method="singlestep", orders=orders, afs=afs, solver_type=solver_type
    )
