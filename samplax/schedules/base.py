"""The noise-schedule interface: ``x_t = alpha(t) x0 + sigma(t) eps``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class NoiseSchedule(eqx.Module):
    """A forward process ``x_t = alpha(t) x0 + sigma(t) eps`` on ``[t_min, t_max]``.

    Subclasses define ``log_alpha(t)`` and ``log_sigma(t)`` (and may override
    ``t_of_lam`` with a closed form). ``lam(t) = log(alpha/sigma)`` must be
    strictly decreasing in ``t``: sampling runs from ``t_max`` (noise) down to
    ``t_min``. ``t_min``/``t_max`` are the default ends of a sampling run;
    ``t_lo``/``t_hi`` bound where the schedule is defined at all.
    """

    # Subclasses declare (with defaults) ``t_min`` and ``t_max`` as static fields.
    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    # -- to implement -----------------------------------------------------------
    def log_alpha(self, t):
        raise NotImplementedError

    def log_sigma(self, t):
        raise NotImplementedError

    # -- derived ------------------------------------------------------------------
    @property
    def t_lo(self) -> float:
        """Smallest time the schedule is defined at (may have sigma = 0 there)."""
        return 0.0

    @property
    def t_hi(self) -> float:
        """Largest time the schedule is defined at."""
        return self.t_max

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.exp(self.log_sigma(t))

    def lam(self, t):
        """Half log-SNR ``log(alpha/sigma)``; ``+inf`` where ``sigma = 0``."""
        return self.log_alpha(t) - self.log_sigma(t)

    def t_of_lam(self, lam):
        """Inverse of :meth:`lam` by bisection on ``[t_lo, t_hi]`` (jittable).

        60 bisection steps reach float64 resolution on any bracket; the result
        is differentiable through the implicit function theorem.
        """
        return _bisect_inverse(self, jnp.asarray(lam))

    def marginal_std(self, t, data_std=1.0):
        """Standard deviation of ``x_t`` for data of the given std."""
        return jnp.sqrt((self.alpha(t) * data_std) ** 2 + self.sigma(t) ** 2)


def _bisect(lam_fn, lam, lo, hi, iters=80):
    lam = jnp.asarray(lam)
    lo = jnp.full_like(lam, lo)
    hi = jnp.full_like(lam, hi)

    def step(_, bounds):
        a, b = bounds
        m = 0.5 * (a + b)
        # lam decreases in t: if lam(m) > target the root lies above m.
        above = lam_fn(m) > lam
        return jnp.where(above, m, a), jnp.where(above, b, m)

    a, b = jax.lax.fori_loop(0, iters, step, (lo, hi))
    return 0.5 * (a + b)


def _bisect_inverse(schedule: NoiseSchedule, lam):
    @jax.custom_jvp
    def inv(lam):
        return _bisect(schedule.lam, jax.lax.stop_gradient(lam), schedule.t_lo, schedule.t_hi)

    @inv.defjvp
    def inv_jvp(primals, tangents):
        (lam,), (dlam,) = primals, tangents
        t = inv(lam)
        dlam_dt = jax.grad(lambda s: jnp.sum(schedule.lam(s)))(t)
        return t, dlam / dlam_dt

    return inv(lam)
