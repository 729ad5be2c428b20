"""Variance-exploding schedules: ``alpha = 1``, only the noise level moves."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule, check_time_range, real_values


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _as_number(name, x) -> float:
    """An EDM bound as a Python float: a real, finite, concrete scalar."""
    a = real_values("EDM", name, x)
    if a is None:
        raise TypeError(f"EDM: {name} must be a concrete number (it is a static field), "
                        f"got a traced value; build the schedule outside jit")
    if a.ndim:
        raise ValueError(f"EDM: {name} must be a scalar, got shape {a.shape}")
    return float(a)


class VE(NoiseSchedule):
    """The VE SDE of Song et al. (2021, eq. 31): ``sigma(t) = s_min (s_max/s_min)^t``.

    ``alpha = 1`` and ``lam = -log sigma`` is linear in ``t``, so the inverse is
    ``t = (-lam - log s_min) / log(s_max/s_min)``. Defaults ``s_min = 0.01``,
    ``s_max = 50`` (CIFAR-10); sampling ends ``[1e-5, 1]`` as in score_sde's
    ``sampling_eps``. ``sigma`` never reaches 0 (``sigma(0) = s_min``).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = eqx.field(default=1e-5, static=True)
    t_max: float = eqx.field(default=1.0, static=True)

    def __check_init__(self):
        check_time_range("VE", self.t_min, self.t_max, t_hi=1.0)
        lo = real_values("VE", "sigma_min", self.sigma_min, what="a finite number > 0")
        hi = real_values("VE", "sigma_max", self.sigma_max, what="a finite number > 0")
        if lo is not None and np.any(lo <= 0):
            raise ValueError(f"VE: sigma_min must be a finite number > 0, got {self.sigma_min!r}")
        if lo is not None and hi is not None and not np.all(lo < hi):
            raise ValueError(f"VE: need 0 < sigma_min < sigma_max, got sigma_min="
                             f"{self.sigma_min!r}, sigma_max={self.sigma_max!r}")

    @property
    def t_hi(self) -> float:
        return 1.0

    def log_alpha(self, t):
        return jnp.zeros_like(_as_float(t))

    def log_sigma(self, t):
        return jnp.log(self.sigma_min) + _as_float(t) * jnp.log(self.sigma_max / self.sigma_min)

    def t_of_lam(self, lam):
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        return (-_as_float(lam) - jnp.log(self.sigma_min)) / log_ratio


class EDM(NoiseSchedule):
    """The schedule of Karras et al. (2022, "EDM", table 1): ``alpha = 1``, ``sigma = t``.

    Time is the noise level itself, ``t = sigma = e^{-lam}``. Sampling ends default
    to ``[sigma_min, sigma_max] = [0.002, 80]``; ``t = 0`` (``t_lo``) is allowed,
    with ``sigma = 0`` and ``lam = +inf``, as the final point of a sampler (see
    ``append_zero`` in :mod:`samplax.schedules.steps`). ``sigma_max`` is also the
    largest time accepted (``t_hi``): pass ``EDM(sigma_max=700.0)`` for SVD.
    """

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        # Static fields: concrete numbers only (a NumPy/JAX scalar is converted).
        lo, hi = (_as_number("sigma_min", sigma_min), _as_number("sigma_max", sigma_max))
        if not 0.0 <= lo < hi:
            raise ValueError(f"EDM: need 0 <= sigma_min < sigma_max, got sigma_min={lo}, "
                             f"sigma_max={hi}")
        self.t_min = lo
        self.t_max = hi

    @property
    def sigma_min(self) -> float:
        return self.t_min

    @property
    def sigma_max(self) -> float:
        return self.t_max

    def log_alpha(self, t):
        return jnp.zeros_like(_as_float(t))

    def log_sigma(self, t):
        return jnp.log(_as_float(t))

    # Exact values, and d sigma/dt = 1 at t = 0 (exp(log t) would give 0 * inf).
    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return _as_float(t)

    def t_of_lam(self, lam):
        return jnp.exp(-_as_float(lam))
