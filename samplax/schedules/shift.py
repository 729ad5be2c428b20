"""Time shift of a noise schedule: the log-SNR moved by a constant.

SD3 (Esser et al. 2024, eq. 23) samples rectified flow at the shifted times
``t' = shift t / (1 + (shift - 1) t)``; Flux's "dynamic shifting" is the same
map with ``shift = e^mu``. For rectified flow ``lam(t) = log((1 - t)/t)`` and
the map is exactly ``lam(t') = lam(t) - log(shift)``, which defines the shift for
every schedule: shift > 1 spends more of the time axis at high noise.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule, describe, real_values


class LogSNRShift(NoiseSchedule):
    """``base`` re-timed so that ``lam'(t) = lam_base(t) - log(shift)``.

    Time ``t`` of the shifted schedule is a point of ``base`` at
    ``base_time(t) = base.t_of_lam(base.lam(t) - log(shift))``, so
    ``alpha'(t) = base.alpha(base_time(t))`` and likewise ``sigma'``. Step
    schedules built on the shifted schedule (e.g. time-uniform) visit the shifted
    times of the base; the network must be called at ``base_time(t)``, which the
    adapters in :mod:`samplax.models.adapters` do. The time range
    (``t_min``, ``t_max``, ``t_lo``, ``t_hi``) is the base's: the ends map to
    themselves when ``sigma`` or ``alpha`` vanishes there. On a base whose ``lam``
    is bounded (VP-linear, a discrete schedule with nonzero terminal SNR) a shift
    above 1 moves ``t_max`` past the base's range: the base's formula is then
    extrapolated (a discrete network would see labels above ``N - 1``), so lower
    ``t_max`` in the step schedule for such models.

    Attributes:
        base: the schedule being shifted.
        shift: positive factor (differentiable); ``1`` is the identity.
    """

    base: NoiseSchedule
    shift: float
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, base: NoiseSchedule, shift):
        if not isinstance(base, NoiseSchedule):
            raise TypeError(f"LogSNRShift: base (the schedule to shift) must be a "
                            f"NoiseSchedule, got {describe(base)}")
        v = real_values("LogSNRShift", "shift", shift, what="a finite positive number")
        if v is not None and not np.all(v > 0):
            raise ValueError(f"LogSNRShift: shift must be a finite positive number, "
                             f"got {describe(shift)}")
        self.base = base
        self.shift = shift
        self.t_min = base.t_min
        self.t_max = base.t_max

    @property
    def t_lo(self) -> float:
        return self.base.t_lo

    @property
    def t_hi(self) -> float:
        return self.base.t_hi

    def base_time(self, t):
        """The base schedule's time at shifted time ``t`` (the network's time)."""
        return self.base.t_of_lam(self.base.lam(t) - jnp.log(self.shift))

    def log_alpha(self, t):
        return self.base.log_alpha(self.base_time(t))

    def log_sigma(self, t):
        return self.base.log_sigma(self.base_time(t))

    def alpha(self, t):
        return self.base.alpha(self.base_time(t))

    def sigma(self, t):
        return self.base.sigma(self.base_time(t))

    def lam(self, t):
        # lam(base_time(t)) = lam(t) - log(shift) exactly; skip the round trip.
        return self.base.lam(t) - jnp.log(self.shift)

    def t_of_lam(self, lam):
        return self.base.t_of_lam(jnp.asarray(lam) + jnp.log(self.shift))


def shifted(schedule: NoiseSchedule, shift) -> LogSNRShift:
    """``schedule`` with its log-SNR lowered by ``log(shift)`` (SD3/Flux time shift).

    For :class:`~samplax.schedules.RectifiedFlow` the shifted time is
    ``shift t / (1 + (shift - 1) t)`` (Esser et al. 2024, eq. 23). SD3 uses
    ``shift = 3``; Flux ``shift = exp(mu)`` with ``mu`` from the image size.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"shifted: schedule must be a NoiseSchedule, got {describe(schedule)}")
    return LogSNRShift(schedule, shift)
