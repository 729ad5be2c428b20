"""Variance-preserving schedules (``alpha^2 + sigma^2 = 1``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule, check_time_range, real_values


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

    def __check_init__(self):
        check_time_range("VPLinear", self.t_min, self.t_max)
        b0 = real_values("VPLinear", "beta_min", self.beta_min)
        b1 = real_values("VPLinear", "beta_max", self.beta_max)
        if b0 is not None and np.any(b0 < 0):
            raise ValueError(f"VPLinear: beta_min must be >= 0, got {self.beta_min!r}")
        if b0 is None or b1 is None:
            return
        # beta(t) is linear in t with beta(0) = beta_min >= 0: positive on (0, t_max]
        # iff positive at t_max.
        end = b0 + self.t_max * (b1 - b0)
        if np.any(end <= 0):
            raise ValueError(
                "VPLinear: beta(t) = beta_min + t (beta_max - beta_min) must be positive on "
                f"(0, t_max]; got beta_min={self.beta_min!r}, beta_max={self.beta_max!r}, "
                f"so beta(t_max={self.t_max:g}) = {float(np.min(end)):.4g}"
            )

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


class VPCosine(NoiseSchedule):
    """The cosine schedule of Nichol & Dhariwal (2021, eq. 17) in continuous time.

    ``alpha(t) = cos(theta(t)) / cos(theta(0))`` with ``theta(t) = (t + s)/(1 + s) pi/2``
    and ``s = 0.008``. Sampling ends default to ``[1e-3, 0.9946]``: as in the
    official DPM-Solver code (``NoiseScheduleVP('cosine')``, ``T = 0.9946``) the
    last part of the schedule, where ``alpha -> 0`` and ``lam -> -inf``, is cut off.
    The schedule itself is defined on ``[0, 1]``: ``sigma(0) = 0`` (``lam = +inf``)
    and ``alpha(1) = 0`` (``lam = -inf``), both without NaN.

    Numerics: with ``k = pi/(2 (1 + s))`` and ``cos(theta(0)) = sin(k)``,

    - ``alpha(t) = sin((1 - t) k) / sin(k)``, exact zero at ``t = 1``;
    - ``sigma(t)^2 = sin(t k) sin((t + 2 s) k) / sin(k)^2`` (from
      ``cos^2 a - cos^2 b = sin(b - a) sin(b + a)``), exact zero at ``t = 0`` and
      accurate for small ``t`` where ``1 - alpha^2`` would cancel;
    - the inverse ``t = atan2(sin(tk), cos(tk)) / k`` where both are written with
      ``alpha`` and ``sigma^2 = sigmoid(-2 lam)`` without cancellation (see
      :meth:`t_of_lam`).
    """

    s: float = 0.008
    t_min: float = eqx.field(default=1e-3, static=True)
    t_max: float = eqx.field(default=0.9946, static=True)

    def __check_init__(self):
        check_time_range("VPCosine", self.t_min, self.t_max, t_hi=1.0)
        s = real_values("VPCosine", "s", self.s, what="a finite number > 0")
        if s is not None and np.any(s <= 0):
            raise ValueError(f"VPCosine: s must be a finite number > 0, got {self.s!r}")

    @property
    def t_hi(self) -> float:
        return 1.0

    def _k(self):
        return 0.5 * jnp.pi / (1.0 + self.s)

    def log_alpha(self, t):
        k = self._k()
        return jnp.log(jnp.sin((1.0 - jnp.asarray(t)) * k)) - jnp.log(jnp.sin(k))

    def alpha(self, t):
        # Exact 0 at t = 1 with a finite slope (exp(log alpha) would give 0 * inf).
        k = self._k()
        return jnp.sin((1.0 - jnp.asarray(t)) * k) / jnp.sin(k)

    def log_sigma(self, t):
        t, k = jnp.asarray(t), self._k()
        return (0.5 * (jnp.log(jnp.sin(t * k)) + jnp.log(jnp.sin((t + 2.0 * self.s) * k)))
                - jnp.log(jnp.sin(k)))

    def t_of_lam(self, lam):
        """Closed-form inverse of :meth:`lam`.

        With ``theta0 = s k``, ``c0 = cos theta0``, ``s0 = sin theta0`` and
        ``r = sin theta = sqrt(s0^2 + c0^2 sigma^2)`` (VP: ``alpha^2 = 1 - sigma^2``):
        ``sin(t k) = c0 sigma^2 / (r + s0 alpha)`` and
        ``cos(t k) = c0^2 alpha + s0 r``. Unlike DPM-Solver's
        ``arccos(alpha c0)``, nothing cancels near ``t = 0``.
        """
        lam = jnp.asarray(lam)
        k = self._k()
        c0, s0 = jnp.cos(self.s * k), jnp.sin(self.s * k)
        sig2 = jax.nn.sigmoid(-2.0 * lam)
        alpha = jnp.sqrt(jax.nn.sigmoid(2.0 * lam))
        r = jnp.sqrt(s0**2 + c0**2 * sig2)
        t = jnp.arctan2(c0 * sig2 / (r + s0 * alpha), c0**2 * alpha + s0 * r) / k
        # lam = -inf must give t = 1 exactly (not 1 + ulp, where alpha is NaN)
        return jnp.minimum(t, 1.0)
