"""Variance-preserving schedules (``alpha^2 + sigma^2 = 1``)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from samplax.schedules.base import NoiseSchedule


def _log_sigma_from_log_alpha(log_alpha):
    # sigma^2 = 1 - alpha^2; log1p(-exp(2 log_alpha)) loses nothing near alpha = 0,
    # and expm1 keeps precision near alpha = 1 (t -> 0).
    return 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


class VPLinear(NoiseSchedule):
    """VP SDE with linear beta(t) = b0 + (b1 - b0) t (Song et al. 2021, eq. 32).

    ``log alpha(t) = -(b1 - b0) t^2/4 - b0 t/2``; closed-form inverse
    ``t = 2L / (sqrt(b0^2 + 2 (b1 - b0) L) + b0)`` with ``L = log(1 + e^{-2 lam})``
    (Lu et al. 2022, DPM-Solver, appendix).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = eqx.field(default=1e-3, static=True)
    t_max: float = eqx.field(default=1.0, static=True)

    def log_alpha(self, t):
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma(self, t):
        return _log_sigma_from_log_alpha(self.log_alpha(t))

    def t_of_lam(self, lam):
        lam = jnp.asarray(lam)
        L = jnp.logaddexp(0.0, -2.0 * lam)
        b0, b1 = self.beta_min, self.beta_max
        return 2.0 * L / (jnp.sqrt(b0**2 + 2.0 * (b1 - b0) * L) + b0)
