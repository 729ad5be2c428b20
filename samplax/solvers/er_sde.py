"""ER-SDE-Solver (Cui et al. 2023): solvers for the extended reverse-time SDE family.

Cui, Zhang, Wang, Huang, Wang & Cao, "Elucidating the Solution Space of Extended
Reverse-Time SDE for Diffusion Models" (arXiv:2309.06169); official code
``QinpengCui/ER-SDE-Solver``, ComfyUI's ``sample_er_sde``. In the EDM view (DESIGN
notation ``sigma_tilde = sigma/alpha = e^{-lam}``, ``x_tilde = x/alpha``) the
family is indexed by a *noise scale function* ``f(sigma_tilde)``; its exact
solution from ``s`` to ``t`` (the paper's exact solution, VE and VP alike here) is

    x_tilde_t = r x_tilde_s + f(st_t) int_{st_t}^{st_s} f'(u)/f(u)^2 x0_hat(u) du
                + sqrt(st_t^2 - st_s^2 r^2) z,        r = f(st_t)/f(st_s).

Expanding ``x0_hat`` around ``st_s`` and integrating by parts gives the order-k
solvers (ER-SDE-Solver-1/2/3, paper Algorithms 1-3):

    stage 1:  (1 - r) x0_hat_s
    stage 2:  + (dt + S1 f(st_t)) x0',      dt = st_t - st_s,   S1 = int_{st_t}^{st_s} du/f(u)
    stage 3:  + (dt^2/2 + S2 f(st_t)) x0'', S2 = int_{st_t}^{st_s} (u - st_s)/f(u) du

with multistep differences ``x0' = (m_s - m_{s-1})/(st_s - st_{s-1})`` and
``x0'' = (x0'_s - x0'_{s-1}) / ((st_s - st_{s-2})/2)`` (the official code's).
The official code integrates ``S1``, ``S2`` with a 200-point Riemann sum; samplax
uses Gauss-Legendre quadrature in ``log u`` (``n_quad`` points; exact to
round-off for smooth ``f``), so coefficients differ from the official ones by
about 1e-3 relative. ``f(x) = x`` gives ``r = st_t/st_s``, no noise: the
probability-flow ODE (order 1 is DDIM exactly). The default
``f(x) = x (e^{x^0.3} + 10)`` is the paper's recommended ER-SDE 5. A last step
to ``sigma = 0`` returns ``x0_hat`` (first order, no noise).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from samplax.solvers._common import check_timesteps, reaches_zero_noise
from samplax.solvers._stochastic import check_nonneg, host_coefficients
from samplax.solvers.edm import edm_grid
from samplax.solvers.plan import Plan, PlanBuilder


def default_noise_scaler(x):
    """The paper's recommended noise scale function ``f(x) = x (e^{x^0.3} + 10)``."""
    x = jnp.asarray(x)
    return x * (jnp.exp(x**0.3) + 10.0)


def _coefficients(st_s, st_t, f, n_quad):
    """``r``, ``sqrt(st_t^2 - st_s^2 r^2)``, stage-2 and stage-3 weights of a step."""
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    zero = st_t <= 0
    st_t_ = jnp.where(zero, st_s * 0.5, st_t)  # finite stand-in; masked below
    f_s, f_t = f(st_s), f(st_t_)
    r = jnp.where(zero, 0.0, f_t / f_s)
    # int_{a}^{b} g(u) du = int_{log a}^{log b} g(e^v) e^v dv, Gauss-Legendre in v
    la, lb = jnp.log(st_t_), jnp.log(st_s)
    v = 0.5 * (lb - la) * jnp.asarray(nodes) + 0.5 * (lb + la)
    u = jnp.exp(v)
    wq = 0.5 * (lb - la) * jnp.asarray(weights) * u / f(u)
    s1 = jnp.sum(wq)
    s2 = jnp.sum(wq * (u - st_s))
    dt = st_t_ - st_s
    c2 = jnp.where(zero, 0.0, dt + s1 * f_t)
    c3 = jnp.where(zero, 0.0, 0.5 * dt**2 + s2 * f_t)
    # st_t^2 - (st_s r)^2 = st_t^2 (1 - q^2) with q = (f(st_t)/st_t)/(f(st_s)/st_s): exactly
    # 0 for the ODE f(x) = x, where the difference of squares would leave round-off.
    q = (f_t / st_t_) / (f_s / st_s)
    var = jnp.where(zero, 0.0, st_t_**2 * (1.0 - q) * (1.0 + q))
    noise = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
    return dict(r=r, noise=noise, c2=c2, c3=c3)


def er_sde(
    schedule,
    timesteps,
    order: int = 3,
    noise_scaler: Callable | None = None,
    s_noise: float = 1.0,
    n_quad: int = 32,
) -> Plan:
    """ER-SDE-Solver-``order`` (Cui et al. 2023, Algorithms 1-3), VP/VE via the EDM view.

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times (the last may have ``sigma = 0``).
        order: 1, 2 or 3 (stages; warm-up ``min(order, i + 1)``, official code).
        noise_scaler: ``f``, a ``jnp`` function, positive and increasing on
            ``(0, inf)``; default :func:`default_noise_scaler`. ``lambda x: x``
            is the ODE.
        s_noise: multiplier of the injected noise.
        n_quad: Gauss-Legendre points for the stage integrals.

    NFE = ``len(timesteps) - 1``; each draw carries ``[t_{i+1}, t_i]`` as its span.
    """
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    check_nonneg("s_noise", s_noise)
    f = default_noise_scaler if noise_scaler is None else noise_scaler
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    to_zero = reaches_zero_noise(schedule, ts[-1])
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    hist, d1s = [], []
    for i in range(n):
        a_s, a_t = alpha[i], alpha[i + 1]
        out = b.evaluate(b.x, times[i])
        hist.append(out.d)
        k = min(order, i + 1)
        if i == n - 1 and to_zero:
            k = 1
        c = host_coefficients(_coefficients, sg[i], sg[i + 1], f, n_quad)
        xt = b.x / a_s
        new = c["r"] * xt + (1.0 - c["r"]) * out.d
        if i >= 1:
            d1s.append((hist[-1] - hist[-2]) / (sg[i] - sg[i - 1]))
        if k >= 2:
            new = new + c["c2"] * d1s[-1]
            if k >= 3:
                d2 = (d1s[-1] - d1s[-2]) / ((sg[i] - sg[i - 2]) * 0.5)
                new = new + c["c3"] * d2
        z = b.noise(span=(times[i + 1], times[i]))
        b.set_x(new * a_t + z * (a_t * c["noise"] * s_noise))
    return b.build()


__all__ = ["default_noise_scaler", "er_sde"]
