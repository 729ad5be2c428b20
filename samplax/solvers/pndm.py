"""Pseudo-numerical multistep solvers: PNDM (Liu et al. 2022) and iPNDM (Zhang & Chen 2023).

Both are linear multistep methods on ``eps_hat`` whose step is DDIM's, which PNDM
calls the *transfer* ``phi`` (Liu et al. 2022, eq. 9). In DESIGN notation
(``sigma_tilde = sigma/alpha = e^{-lam}``, ``x_tilde = x/alpha``) the transfer of
``x_s`` to ``t`` with a noise estimate ``e`` is

    phi(x_s, e, s -> t) = alpha_t (x_tilde_s + (sigma_tilde_t - sigma_tilde_s) e),

which for VP schedules equals PNDM's eq. 9
``sqrt(abar_t/abar_s) x_s - (abar_t - abar_s) e / (sqrt(abar_s)(sqrt((1 - abar_t) abar_s)
+ sqrt((1 - abar_s) abar_t)))`` with ``abar = alpha^2``. So both methods are
Adams-Bashforth on ``d x_tilde / d sigma_tilde = eps_hat`` (the EDM view), and
differ only in how they start and in the step geometry of their coefficients.

Convergence (measured in ``tests/test_pndm.py``): the fixed coefficients
``[3, -1]/2 ... [55, -59, 37, -9]/24`` are the Adams-Bashforth weights of *equal*
steps in ``sigma_tilde``. On a smoothly graded grid (logSNR-uniform, Karras,
...) they are consistent to second order only, so fixed-weight iPNDM and every
PNDM variant converge at order 2 there. On a ``sigma_tilde``-uniform grid they
are exact Adams-Bashforth weights and F-PNDM (pseudo RK4 start) shows order 4.
``ipndm(variable_step=True)`` integrates the interpolating polynomial over the
actual steps (true variable-step Adams-Bashforth) and shows order k on graded
grids. Any multistep method started with an Euler step (iPNDM of either kind)
carries that step's O(h^2) error: negligible when sampling starts at high noise
(as usual; invisible on the VP test problem, which starts at
``sigma_tilde = 152``), but it caps the asymptotic order at 2 otherwise
(fixed iPNDM-4 on the uniform EDM grid from ``sigma = 2``: 2.6 and falling).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from samplax.solvers._common import check_timesteps, reaches_zero_noise
from samplax.solvers.edm import edm_grid, sigma_tilde
from samplax.solvers.plan import Lin, Plan, PlanBuilder, lin_sum

# Adams-Bashforth weights for equal steps, newest output first.
AB_FIXED: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}

PNDM_METHODS = ("s", "f", "plms")


def adams_bashforth_weights(nodes: Sequence, t_next):
    """Variable-step Adams-Bashforth weights, newest node first.

    ``nodes = [tau_0, tau_1, ..., tau_{k-1}]`` are the times of the last ``k``
    derivative values (``tau_0`` the current one); the step goes from ``tau_0`` to
    ``t_next``. Returns ``w`` (shape ``[k]``) with
    ``w_j = (1/Delta) int_{tau_0}^{t_next} L_j(tau) d tau``, ``Delta = t_next - tau_0``
    and ``L_j`` the Lagrange basis polynomial of node ``j``, so that
    ``y_next = y_0 + Delta sum_j w_j f_j`` integrates the interpolating polynomial
    of the ``f_j`` exactly (Hairer, Norsett & Wanner, *Solving ODEs I*, III.5).
    With ``u = (tau - tau_0)/Delta`` the nodes sit at ``r_j = (tau_j - tau_0)/Delta``
    and the weights are the unique solution of the moment conditions
    ``sum_j w_j r_j^p = int_0^1 u^p du = 1/(p + 1)``, ``p = 0..k-1`` (a ``k x k``
    Vandermonde system). Pure ``jnp``: differentiable in the times. Equal steps
    (``r_j = -j``) give :data:`AB_FIXED`.
    """
    k = len(nodes)
    if k == 1:
        return jnp.ones((1,), jnp.result_type(float))
    tau = jnp.stack([jnp.asarray(v) for v in nodes])
    r = (tau - tau[0]) / (t_next - tau[0])
    rows = [jnp.ones_like(r)]
    for _ in range(1, k):  # powers by products: no 0**0 in the derivative
        rows.append(rows[-1] * r)
    moments = jnp.asarray([1.0 / (p + 1) for p in range(k)], r.dtype)
    return jnp.linalg.solve(jnp.stack(rows), moments)


def _transfer(xt_s: Lin, sg_s, e: Lin, a_t, sg_t) -> Lin:
    """PNDM's transfer ``phi`` (DDIM step) in the EDM view: ``alpha_t (x_tilde_s + dsig e)``."""
    return (xt_s + e * (sg_t - sg_s)) * a_t


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an integer in 1..4, got {order!r}")
    return order


def ipndm(schedule, timesteps, order: int = 4, variable_step: bool = False) -> Plan:
    """iPNDM: Adams-Bashforth in the EDM view (Zhang & Chen 2023, DEIS, appendix).

    "Improved PNDM" replaces PNDM's pseudo Runge-Kutta warm-up by lower-order
    multistep steps. In DESIGN notation, with ``eps_i = eps_hat(x_i, t_i)``
    (one NFE per step) and ``sigma_tilde = e^{-lam}``::

        x_tilde_{i+1} = x_tilde_i + (sigma_tilde_{i+1} - sigma_tilde_i) sum_j w_j eps_{i-j},
        x_{i+1} = alpha_{i+1} x_tilde_{i+1},

    using ``k = min(order, i + 1)`` outputs. ``variable_step=False`` (iPNDM, as in
    the GITS code, ``zju-pi/diff-sampler``) uses the equal-step weights
    ``[1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24``;
    ``variable_step=True`` (iPNDM_v) uses the exact variable-step Adams-Bashforth
    weights on the ``sigma_tilde`` grid (:func:`adams_bashforth_weights`).
    Order 1 is :func:`samplax.solvers.edm.euler` (= DDIM). Never evaluates
    ``eps_hat`` at ``sigma = 0``, so the last time may have ``sigma = 0``.
    NFE = ``len(timesteps) - 1``.

    Order (module docstring): with ``variable_step=True`` order k on graded grids;
    the equal-step weights give order 2 on graded grids and are exact
    Adams-Bashforth only on ``sigma_tilde``-uniform ones. Both start with an
    Euler step (local error O(h^2)): negligible when sampling starts at high
    noise, where ``eps_hat`` hardly changes, but asymptotically it caps the
    global order at 2.

    The iPNDM_v of the GITS/AMED code writes closed-form weights that, as read
    there, differ from these on uneven steps for orders 3 and 4 (its order-3
    weights integrate only linear polynomials exactly; its order-4 weights sum
    to 1 only on geometric grids). samplax has no parity option for them.

    Args:
        schedule: a :class:`~samplax.schedules.NoiseSchedule`.
        timesteps: strictly decreasing times.
        order: maximal multistep order, 1..4.
        variable_step: use variable-step Adams-Bashforth weights (iPNDM_v).

    Returns:
        A deterministic :class:`~samplax.solvers.plan.Plan`.
    """
    order = _check_order(order)
    if not isinstance(variable_step, bool):
        raise ValueError(f"variable_step must be True or False, got {variable_step!r}")
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    eps: list[Lin] = []
    for i in range(n):
        xt_s = b.x / alpha[i]
        out = b.evaluate(b.x, times[i])
        eps.append(out.e)
        k = min(order, i + 1)
        if variable_step and k > 1:
            w_arr = adams_bashforth_weights(sg[i::-1][:k], sg[i + 1])
            w = [w_arr[j] for j in range(k)]
        else:
            w = AB_FIXED[k]
        e = lin_sum(eps[::-1][:k], w)
        b.set_x(_transfer(xt_s, sg[i], e, alpha[i + 1], sg[i + 1]))
    return b.build()


def pndm(schedule, timesteps, method: str = "f") -> Plan:
    """PNDM: pseudo linear multistep with the DDIM transfer (Liu et al. 2022, ICLR).

    Every step is ``x_{i+1} = phi(x_i, e'_i, t_i -> t_{i+1})`` with PNDM's transfer
    ``phi`` (eq. 9; module docstring: ``alpha_t (x_tilde_s + (sigma_tilde_t -
    sigma_tilde_s) e')`` in DESIGN notation) and ``e'_i`` a combination of noise
    predictions ``eps_j = eps_hat(x_j, t_j)``. Following the official code
    (``luping-liu/PNDM``, ``runner/method.py``):

    - ``method="f"`` (F-PNDM, the paper's PNDM): three pseudo Runge-Kutta warm-up
      steps, ``e1 = eps(x, s)``, ``e2 = eps(phi(x, e1, s -> m), m)``,
      ``e3 = eps(phi(x, e2, s -> m), m)``, ``e4 = eps(phi(x, e3, s -> t), t)``,
      ``e' = (e1 + 2 e2 + 2 e3 + e4)/6`` with ``m = (s + t)/2`` the midpoint in the
      schedule's time; then the pseudo linear multistep
      ``e' = (55 eps_i - 59 eps_{i-1} + 37 eps_{i-2} - 9 eps_{i-3})/24`` on the
      first-stage outputs. NFE = ``N + 9`` for ``N >= 3`` steps (``4N`` below).
    - ``method="s"`` (S-PNDM): a pseudo improved Euler first step,
      ``e' = (eps(x, s) + eps(phi(x, eps(x, s), s -> t), t))/2``, then the
      second-order pseudo linear multistep ``e' = (3 eps_i - eps_{i-1})/2``.
      NFE = ``N + 1``.
    - ``method="plms"``: diffusers' ``PNDMScheduler(skip_prk_steps=True)`` / LDM's
      PLMS: S-PNDM's first step, then orders 2, 3, 4 (``[3, -1]/2``,
      ``[23, -16, 5]/12``, ``[55, -59, 37, -9]/24``). NFE = ``N + 1``.

    Order: the multistep weights are those of equal steps in ``sigma_tilde``
    (Adams-Bashforth in the EDM view), so on graded grids (logSNR-uniform, the
    usual discrete spacings) all variants converge at order 2; on a
    ``sigma_tilde``-uniform grid F-PNDM reaches order 4 when the midpoint ``m`` is
    also the ``sigma_tilde`` midpoint (EDM/VE schedules), PLMS order 3 (its
    Heun start) and S-PNDM order 2.

    A final ``sigma = 0`` is handled like diffusers (``set_alpha_to_one``): the
    transfer reaches it without dividing by ``sigma`` (it returns
    ``alpha_t (x_tilde - sigma_tilde e')``). Only warm-up stages that would
    *evaluate* the network at ``sigma = 0`` (S-PNDM / PLMS with one step, F-PNDM
    with at most three) are refused with a ``ValueError`` (checked on concrete
    times; traced times skip the check).

    Args:
        schedule: a :class:`~samplax.schedules.NoiseSchedule`.
        timesteps: strictly decreasing times.
        method: ``"f"`` (F-PNDM), ``"s"`` (S-PNDM) or ``"plms"``.

    Returns:
        A deterministic :class:`~samplax.solvers.plan.Plan`.
    """
    if method not in PNDM_METHODS:
        raise ValueError(f"method must be one of {PNDM_METHODS}, got {method!r}")
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    n_warm = 3 if method == "f" else 1
    if n <= n_warm and reaches_zero_noise(schedule, ts[-1]):
        raise ValueError(
            f"pndm(method={method!r}) with {n} step(s) to sigma = 0 would evaluate "
            f"eps_hat at sigma = 0 in its warm-up; use at least {n_warm + 1} steps or "
            "end at sigma > 0"
        )
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    eps: list[Lin] = []
    for i in range(n):
        s, t = times[i], times[i + 1]
        a_t, sg_s, sg_t = alpha[i + 1], sg[i], sg[i + 1]
        xt_s = b.x / alpha[i]
        out = b.evaluate(b.x, s)
        eps.append(out.e)
        if i < n_warm and method == "f":
            m = 0.5 * (s + t)
            a_m, sg_mi = schedule.alpha(m), sigma_tilde(schedule, m)
            e2 = b.evaluate(_transfer(xt_s, sg_s, out.e, a_m, sg_mi), m).e
            e3 = b.evaluate(_transfer(xt_s, sg_s, e2, a_m, sg_mi), m).e
            e4 = b.evaluate(_transfer(xt_s, sg_s, e3, a_t, sg_t), t).e
            e = (out.e + e2 * 2.0 + e3 * 2.0 + e4) / 6.0
        elif i < n_warm:
            e2 = b.evaluate(_transfer(xt_s, sg_s, out.e, a_t, sg_t), t).e
            e = (out.e + e2) * 0.5
        else:
            k = {"s": 2, "f": 4, "plms": min(4, i + 1)}[method]
            e = lin_sum(eps[::-1][:k], AB_FIXED[k])
        b.set_x(_transfer(xt_s, sg_s, e, a_t, sg_t))
    return b.build()


__all__ = ["adams_bashforth_weights", "ipndm", "pndm"]
