"""EDM's stochastic sampler (Karras, Aittala, Aila & Laine 2022, Algorithm 2): "churn".

Before each step the noise level is raised from ``sigma_tilde_i`` to
``sigma_hat = sigma_tilde_i (1 + gamma_i)`` by adding fresh noise, then a
deterministic step (Heun, or Euler) goes from ``sigma_hat`` to ``sigma_tilde_{i+1}``
(DESIGN notation, EDM view: ``sigma_tilde = sigma/alpha = e^{-lam}``,
``x_tilde = x/alpha``)::

    gamma_i   = min(S_churn/N, sqrt(2) - 1)   if S_tmin <= sigma_tilde_i <= S_tmax else 0,
    sigma_hat = sigma_tilde_i (1 + gamma_i),        t_hat = t(lam = -log sigma_hat),
    x_hat     = alpha(t_hat) (x_tilde_i + S_noise sqrt(sigma_hat^2 - sigma_tilde_i^2) z),

then :mod:`samplax.solvers.edm`'s Heun (or Euler) step from ``t_hat`` to ``t_{i+1}``
(Algorithm 2, lines 4-11; k-diffusion's ``sample_heun`` / ``sample_euler`` with
``s_churn``). ``N`` is the number of steps. ``S_tmin``, ``S_tmax`` are EDM noise
levels ``sigma_tilde``. With ``S_churn = 0`` every ``gamma_i = 0``, ``t_hat = t_i``
and the plan is :func:`samplax.solvers.edm.heun` (or ``euler``) exactly.
EDM's tuned values (Table 5): CIFAR-10 VP ``S_churn = 30, S_tmin = 0.01,
S_tmax = 1, S_noise = 1.007``; ImageNet-64 ``S_churn = 80, S_tmin = 0.05,
S_tmax = 50, S_noise = 1.003``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from samplax.solvers._common import check_timesteps, reaches_zero_noise, real_option
from samplax.solvers._stochastic import check_nonneg, host_coefficients
from samplax.solvers.edm import _euler_step, _heun_step, edm_grid
from samplax.solvers.plan import Plan, PlanBuilder


def churn_gamma(st_i, n_steps: int, S_churn, S_tmin, S_tmax):
    """``gamma_i`` of EDM Algorithm 2 (line 3) at the EDM noise level ``st_i``."""
    g = jnp.minimum(jnp.asarray(S_churn, jnp.result_type(st_i, float)) / n_steps,
                    math.sqrt(2.0) - 1.0)
    return jnp.where((st_i >= S_tmin) & (st_i <= S_tmax), g, 0.0)


def noise_up(schedule, t_i, st_i, a_i, s_hat):
    """Raise the EDM noise level from ``st_i`` (time ``t_i``, ``alpha_i``) to ``s_hat >= st_i``.

    Returns ``(t_hat, alpha(t_hat), s_hat, alpha(t_hat)/alpha_i, sqrt(s_hat^2 - st_i^2))``
    so that ``x_hat = ratio x + alpha(t_hat) add z`` (EDM Algorithm 2, lines 4-5, in
    the ``x = alpha x_tilde`` scaling). Where ``s_hat == st_i`` every value is the
    unchanged point's exactly (``ratio = 1``, ``add = 0``). Shared with Restart's jumps.
    """
    on = s_hat > st_i
    t_hat = jnp.where(on, schedule.t_of_lam(-jnp.log(s_hat)), t_i)
    a_hat = jnp.where(on, schedule.alpha(t_hat), a_i)
    s_hat = jnp.where(on, s_hat, st_i)
    ratio = jnp.where(on, a_hat / a_i, 1.0)
    # a product, not s_hat^2 - st_i^2: exactly 0 when equal even under FMA contraction
    var = (s_hat - st_i) * (s_hat + st_i)
    add = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
    return t_hat, a_hat, s_hat, ratio, add


def _coefficients(schedule, t_i, st_i, a_i, n_steps, S_churn, S_tmin, S_tmax):
    gamma = churn_gamma(st_i, n_steps, S_churn, S_tmin, S_tmax)
    return noise_up(schedule, t_i, st_i, a_i, st_i * (1.0 + gamma))


def _check_window(S_tmin, S_tmax) -> None:
    """The churn window ``[S_tmin, S_tmax]``: numbers (``S_tmax`` may be inf), in order."""
    lo = real_option("S_tmin", S_tmin, "a number >= 0 (an EDM noise level)", finite=False)
    hi = real_option("S_tmax", S_tmax, "a number >= 0 (an EDM noise level; inf allowed)",
                     finite=False)
    for name, v, a in (("S_tmin", S_tmin, lo), ("S_tmax", S_tmax, hi)):
        if a is not None and (np.any(np.isnan(a)) or np.any(a < 0)):
            raise ValueError(f"{name} must be a number >= 0 (an EDM noise level), got {v!r}")
    if lo is not None and np.any(np.isposinf(lo)):
        raise ValueError(f"S_tmin must be finite, got {S_tmin!r}")
    if lo is not None and hi is not None and np.any(lo > hi):
        raise ValueError(f"the churn window is empty: S_tmin={S_tmin!r} > S_tmax={S_tmax!r} "
                         "(churn applies where S_tmin <= sigma <= S_tmax)")


def edm_stochastic(
    schedule,
    timesteps,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    *,
    solver: str = "heun",
    final_euler: bool = True,
) -> Plan:
    """EDM's stochastic sampler, Karras et al. 2022, Algorithm 2 (module docstring).

    Args:
        schedule: the noise schedule (any: the churn acts in the EDM view).
        timesteps: strictly decreasing times, e.g. ``karras(EDM(), 18, append_zero=True)``.
        S_churn: total churn; ``gamma_i = min(S_churn/N, sqrt(2) - 1)``.
        S_tmin, S_tmax: churn only where ``S_tmin <= sigma_tilde_i <= S_tmax``.
        S_noise: inflation of the added noise (slightly above 1 in EDM).
        solver: ``"heun"`` (Algorithm 2) or ``"euler"`` (its first-order variant,
            k-diffusion's ``sample_euler`` with churn).
        final_euler: with Heun, take the last step with Euler (as Algorithm 2 does
            for a final ``sigma = 0``).

    NFE = ``2N - 1`` (Heun, ``final_euler``), ``2N`` (Heun without), ``N`` (Euler).
    The churned time ``t_hat`` must lie where the schedule's ``t_of_lam`` is valid
    (for ``sigma_hat`` above the schedule's ``sigma_max`` use ``S_tmax`` below it, as
    EDM does). Each churn draw carries its step ``[t_{i+1}, t_i]`` as its Brownian span.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    if not isinstance(final_euler, bool):
        raise ValueError(f"final_euler must be True or False, got {final_euler!r}")
    for name, v in (("S_churn", S_churn), ("S_noise", S_noise)):
        check_nonneg(name, v)
    _check_window(S_tmin, S_tmax)
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    if solver == "heun" and not final_euler and reaches_zero_noise(schedule, ts[-1]):
        raise ValueError("heun without final_euler cannot step to sigma = 0; use final_euler")
    times, alpha, sg = edm_grid(schedule, ts)
    b = PlanBuilder(schedule)
    for i in range(n):
        t_hat, a_hat, s_hat, ratio, add = host_coefficients(
            _coefficients, schedule, times[i], sg[i], alpha[i], n,
            jnp.asarray(S_churn, float), jnp.asarray(S_tmin, float), jnp.asarray(S_tmax, float),
        )
        # x_hat is evaluated and used within step i's first slot, with its own draw.
        z = b.noise(span=(times[i + 1], times[i]))
        x_hat = b.x * ratio + z * (a_hat * S_noise * add)
        euler = solver == "euler" or (final_euler and i == n - 1)
        step = _euler_step if euler else _heun_step
        step(b, t_hat, times[i + 1], a_hat, alpha[i + 1], s_hat, sg[i + 1], x=x_hat)
    return b.build()


__all__ = ["churn_gamma", "edm_stochastic", "noise_up"]
