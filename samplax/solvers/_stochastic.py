"""Helpers shared by the stochastic and plug-in samplers.

* :func:`host_coefficients`: run a per-step coefficient function (a pure ``jnp``
  function of the times) compiled once per shape, and move concrete results to
  the host so the symbolic plan algebra does not dispatch a device op per scalar;
  traced times (gradients, ``vmap`` over schedules) stay traced.
* :func:`sde_coefficients`: the scalars of one step of the data-form SDE
  exponential integrator (SDE-DPM-Solver++, SA-Solver), DESIGN notation.
* :func:`check_nonneg`: option validation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.numerics import phis
from samplax.solvers._common import is_concrete


def host_coefficients(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled with ``eqx.filter_jit``; concrete results on the host."""
    out = _jitted(fn)(*args, **kwargs)
    leaves = jax.tree.leaves(out)
    if leaves and all(is_concrete(v) for v in leaves):
        return jax.device_get(out)
    return out


_CACHE: dict = {}


def _jitted(fn):
    f = _CACHE.get(fn)
    if f is None:
        f = _CACHE[fn] = eqx.filter_jit(fn)
    return f


def sde_coefficients(schedule, s, t, eta, kmax: int = 3) -> dict:
    """Scalars of one step ``s -> t`` of the data-form SDE exponential integrator.

    Lu et al. 2022b (DPM-Solver++, its SDE solver "SDE-DPM-Solver++"), with
    k-diffusion's ``eta`` (``sample_dpmpp_2m_sde``), and Xue et al. 2023 (SA-Solver,
    with ``eta = tau^2``): the variance-controlled reverse SDE, integrated
    exactly in its linear part, gives (``h = lam_t - lam_s``, ``H = (1 + eta) h``)::

        x_t = (sigma_t/sigma_s) e^{-eta h} x_s
              + alpha_t (1 + eta) int_0^h e^{-(1 + eta)(h - u)} x0_hat(lam_s + u) du
              + sigma_t sqrt(1 - e^{-2 eta h}) z.

    Taylor-expanding ``x0_hat`` in ``lam``, the terms ``x0_hat``, ``h x0'`` and
    ``h^2 x0''`` get the weights ``alpha_t c1``, ``alpha_t c2``, ``alpha_t c3`` with
    ``c1 = 1 - e^{-H}``, ``c2 = H phi_2(-H)``, ``c3 = H phi_3(-H)``. Returned: those,
    ``A = (sigma_t/sigma_s) e^{-eta h}``, ``B = alpha_t``,
    ``noise = sigma_t sqrt(1 - e^{-2 eta h})``, ``lam_s``, ``h`` and
    ``H``. ``eta = 0`` is DPM-Solver++ (the probability-flow ODE); ``eta = 1`` the
    published SDE solver. On a step that reaches ``sigma_t = 0`` (``h = inf``) the
    higher-order terms get the finite stand-in ``hh = 1`` and the weight ``w = 0``
    (values and gradients stay finite); ``A = 0``, ``c1 = 1``, ``noise = 0``.
    """
    lam_s, lam_t = schedule.lam(s), schedule.lam(t)
    h = lam_t - lam_s
    fin = jnp.isfinite(h)
    hh = jnp.where(fin, h, jnp.ones_like(h))
    eta = jnp.asarray(eta, hh.dtype)
    H = (1.0 + eta) * hh
    sigma_s, sigma_t = schedule.sigma(s), schedule.sigma(t)
    ph = phis(-H, kmax)
    out = dict(
        lam_s=lam_s,
        lam_t=lam_t,
        h=hh,
        H=H,
        w=jnp.where(fin, 1.0, 0.0),
        A=sigma_t / sigma_s * jnp.exp(-eta * hh),
        B=schedule.alpha(t),
        # Written with h itself: exactly 1 at h = inf (eta >= 0).
        c1=-jnp.expm1(-(1.0 + eta) * h),
        noise=sigma_t * jnp.sqrt(jnp.maximum(-jnp.expm1(-2.0 * eta * hh), 0.0)),
    )
    for k in range(2, kmax + 1):
        out[f"c{k}"] = H * ph[..., k - 1]
    return out


def check_nonneg(name: str, v) -> None:
    if is_concrete(v):
        import numpy as np

        a = np.asarray(v, dtype=float)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
