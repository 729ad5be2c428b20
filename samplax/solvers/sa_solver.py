"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023).

Xue, Yi, Zhang, Zhu & Li, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
Diffusion Models", NeurIPS 2023 (arXiv:2309.05019); official code
``scxue/SA-Solver`` and diffusers' ``SASolverScheduler``. The variance-controlled
reverse SDE with noise scale ``tau(t)`` is, in data form and DESIGN
notation, the SDE of :func:`samplax.solvers._stochastic.sde_coefficients` with
``eta = tau^2``. A step ``s -> t`` (``h = lam_t - lam_s``, ``H = (1 + tau^2) h``)
integrates the Lagrange interpolant (in ``lam``) of the data predictions through
chosen nodes exactly against the exponential weight::

    x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + alpha_t (1 + tau^2) h sum_j w_j D_j
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi,

``w = V^{-T} g`` with ``g_m = int_0^1 e^{-H(1-u)} u^m du = m! phi_{m+1}(-H)`` and
``V_{jm} = r_j^m``, ``r_j = (lam_j - lam_s)/h`` (:func:`samplax.solvers.usf.interpolation_weights`
with ``H`` in place of ``h``):

* **SA-Predictor** (stochastic Adams-Bashforth, order ``p``): nodes ``s`` and the
  ``p - 1`` previous evaluation times;
* **SA-Corrector** (stochastic Adams-Moulton, order ``c``): the new output at ``t``
  (evaluated at the predicted point, ``r = 1``), ``s`` and ``c - 2`` previous
  ones, with the *same* noise ``xi`` as the predictor.

``PEC`` (default) keeps the output at the predicted point for the next steps:
1 NFE per step, the corrector is free. ``PECE`` evaluates again at the corrected
point (2 NFE per step but the last). Orders warm up as ``min(p, i + 1)``,
``min(c, i + 2)`` (diffusers); the last step has no corrector. ``tau = 0`` is the
deterministic Adams predictor-corrector (for ``c = p + 1`` exactly USF/UniC-style
``usf(Step("data", p, corrector=True))``). The official code adds an ``O(h^3)``
modification to order-2 coefficients for few steps; samplax leaves it out.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from samplax.solvers._common import check_timesteps, reaches_zero_noise, real_option
from samplax.solvers._stochastic import host_coefficients, sde_coefficients
from samplax.solvers.plan import Lin, Plan, PlanBuilder, lin_sum
from samplax.solvers.usf import interpolation_weights, phi_moments

MODES = ("PEC", "PECE")
MAX_ORDER = 4
# diffusers' SASolverScheduler lowers the final orders below this many steps
LOWER_ORDER_FINAL_BELOW = 15


def tau_interval(t_lo, t_hi, value: float = 1.0) -> Callable:
    """``tau(t) = value`` on ``[t_lo, t_hi]`` (schedule times), ``0`` outside (SA-Solver)."""

    def tau(t):
        t = jnp.asarray(t)
        return jnp.where((t >= t_lo) & (t <= t_hi), value, 0.0)

    return tau


def default_tau(schedule) -> Callable:
    """SA-Solver's default: ``tau = 1`` on the middle of the trajectory, ``0`` at the ends.

    diffusers uses ``1 if 200 <= timestep <= 800 else 0`` for 1000 discrete steps;
    here ``tau = 1`` for ``0.2 <= (t - t_lo)/(t_hi - t_lo) <= 0.8``. For EDM-style
    schedules (``t = sigma``) pass an explicit ``tau`` instead.
    """
    lo, hi = float(schedule.t_lo), float(schedule.t_hi)
    return tau_interval(lo + 0.2 * (hi - lo), lo + 0.8 * (hi - lo))


def _step(schedule, s, t, eta, lam_nodes):
    """One step's SDE scalars and the Lagrange weights of the nodes ``lam_nodes``."""
    c = sde_coefficients(schedule, s, t, eta, kmax=1)
    r = [(lam - c["lam_s"]) / c["h"] for lam in lam_nodes]
    g = phi_moments(c["H"], "data", len(r))
    w = interpolation_weights(r, c["H"], "data", g)
    scale = c["w"] * c["B"] * (1.0 + jnp.asarray(eta, c["h"].dtype)) * c["h"]
    # where the step reaches sigma = 0 (w = 0) the first-order data step is exact
    first = c["B"] * c["c1"]
    return dict(A=c["A"], noise=c["noise"], scale=scale, w=w, first=first,
                fin=c["w"])


def _combination(x: Lin, nodes: list, k: dict) -> Lin:
    """``A x + alpha_t (1 + eta) h sum_j w_j D_j`` (module docstring); ``nodes[0]`` at ``s``
    except for the corrector, whose weights are positional too."""
    ws = [k["w"][j] for j in range(len(nodes))]
    exact = lin_sum(nodes, [k["scale"] * wj for wj in ws])
    # a step to sigma = 0: exact = 0 there (fin = 0); add the first-order data step
    return k["A"] * x + exact + (k["first"] * (1.0 - k["fin"])) * nodes[0]


def sa_solver(
    schedule,
    timesteps,
    predictor_order: int = 3,
    corrector_order: int = 4,
    tau: float | Callable | None = None,
    mode: str = "PEC",
    s_noise: float = 1.0,
    lower_order_final: bool = True,
) -> Plan:
    """SA-Solver (Xue et al. 2023) as a stochastic plan (module docstring).

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times ``t_0 > .. > t_N``.
        predictor_order: ``p`` in 1..4 (SA-Predictor).
        corrector_order: ``c`` in 1..4 (SA-Corrector; 1 = no correction). Defaults
            ``(3, 4)`` for unconditional sampling; ``(2, 2)`` is recommended with
            strong classifier-free guidance.
        tau: the noise scale ``tau(t)`` (a float, or a ``jnp`` function of the
            schedule's time evaluated at each step's start); ``None`` =
            :func:`default_tau`. ``0`` = deterministic (ODE) sampling.
        mode: ``"PEC"`` (NFE = N) or ``"PECE"`` (NFE = 2N - 1).
        s_noise: multiplier of the injected noise.
        lower_order_final: with fewer than 15 steps, lower the orders over the last
            steps as diffusers does (``min(p, N - i)``, ``min(c, N - i + 1)``).

    Each step's single draw ``xi`` carries the step ``[t_{i+1}, t_i]`` as its span.
    """
    for name, v in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ORDER:
            raise ValueError(f"{name} must be an integer in 1..{MAX_ORDER}, got {v!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    if tau is None:
        tau = default_tau(schedule)
    if not callable(tau):
        what = "a finite number >= 0 or a function of t"
        v = real_option("tau", tau, what)
        if v is not None and np.any(v < 0):
            raise ValueError(f"tau must be {what}, got {tau!r}")
    tau_fn = tau if callable(tau) else (lambda t, v=tau: jnp.asarray(v, float))
    to_zero = reaches_zero_noise(schedule, ts[-1])
    lof = lower_order_final and n < LOWER_ORDER_FINAL_BELOW
    times = list(ts)
    lams = [schedule.lam(t) for t in times]
    b = PlanBuilder(schedule)
    outs = [b.evaluate(b.x, times[0]).d]
    out_lams = [lams[0]]
    for i in range(n):
        s, t = times[i], times[i + 1]
        last = i == n - 1
        eta = jnp.asarray(tau_fn(s), float) ** 2
        p = min(predictor_order, len(outs))
        if lof:
            p = min(p, n - i)
        if last and to_zero:
            p = 1
        nodes = outs[::-1][:p]
        kp = host_coefficients(_step, schedule, s, t, eta, tuple(out_lams[::-1][:p]))
        xi = b.noise(span=(t, s))
        noise = xi * (kp["noise"] * s_noise)
        x_pred = _combination(b.x, nodes, kp) + noise
        if last:
            return b.build(out=x_pred)
        new = b.evaluate(x_pred, t).d
        c = min(corrector_order, len(outs) + 1)
        if lof:
            c = min(c, n - i + 1)
        if c > 1:
            prev = outs[::-1][: c - 1]
            lam_c = (lams[i + 1],) + tuple(out_lams[::-1][: c - 1])
            kc = host_coefficients(_step, schedule, s, t, eta, lam_c)
            x_corr = _combination(b.x, [new, *prev], kc) + noise
        else:
            x_corr = x_pred
        b.set_x(x_corr)
        if mode == "PECE":
            new = b.evaluate(b.x, t).d
        outs.append(new)
        out_lams.append(lams[i + 1])
    raise AssertionError("unreachable")


__all__ = ["default_tau", "sa_solver", "tau_interval"]
