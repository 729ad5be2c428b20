"""Rectified flow / flow matching: the straight path ``x_t = (1 - t) x0 + t eps``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.schedules.base import NoiseSchedule, check_time_range


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


class RectifiedFlow(NoiseSchedule):
    """Rectified flow (Liu et al. 2023) / conditional flow matching with the linear
    path (Lipman et al. 2023), as used by SD3 and Flux: ``alpha = 1 - t``, ``sigma = t``.

    ``lam = log((1 - t)/t)`` and ``t = sigmoid(-lam)``. The schedule is defined on
    ``[0, 1]`` with both ends reachable: ``t = 0`` is the data (``sigma = 0``,
    ``lam = +inf``), ``t = 1`` pure noise (``alpha = 0``, ``lam = -inf``). A
    sampler cannot start at ``lam = -inf``, and log-SNR step schedules need finite
    ends, so the default sampling range is ``[1e-3, 1 - 1e-3]`` (``|lam| <= 6.9``):
    ``x_T ~ N(0, I)`` then differs from the true marginal at ``t_max`` by
    ``1e-3 x0``. Finish at ``t = 0`` with ``append_zero=True`` in the step
    schedules. For SD3/Flux's time shift use :func:`samplax.schedules.shifted`.
    """

    t_min: float = eqx.field(default=1e-3, static=True)
    t_max: float = eqx.field(default=1.0 - 1e-3, static=True)

    def __check_init__(self):
        check_time_range("RectifiedFlow", self.t_min, self.t_max, t_hi=1.0)

    @property
    def t_hi(self) -> float:
        return 1.0

    def log_alpha(self, t):
        return jnp.log1p(-_as_float(t))

    def log_sigma(self, t):
        return jnp.log(_as_float(t))

    # Exact values and slopes at both ends (exp(log(.)) would give 0 * inf there).
    def alpha(self, t):
        return 1.0 - _as_float(t)

    def sigma(self, t):
        return _as_float(t)

    def t_of_lam(self, lam):
        return jax.nn.sigmoid(-_as_float(lam))
