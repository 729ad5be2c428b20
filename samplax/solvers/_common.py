"""Shared pieces of the solver constructors: time validation and step geometry."""

from __future__ import annotations

import jax
import numpy as np

from samplax.schedules.steps import validate_timesteps


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer): checks on values are possible."""
    return not isinstance(x, jax.core.Tracer)


def real_option(name: str, v, what: str, *, finite: bool = True):
    """A numeric option's concrete values as a float64 array (``None`` when traced).

    Anything NumPy turns into floats is a number here, as for the other stochastic
    options (:func:`samplax.solvers._stochastic.check_nonneg`); anything else is a
    ``TypeError`` and, when ``finite``, NaN or inf a ``ValueError``, both naming ``name``.
    """
    if not is_concrete(v):
        return None
    try:
        a = np.asarray(v, dtype=float)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be {what}, got {v!r} ({type(v).__name__})") from e
    if finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return a


def check_timesteps(schedule, timesteps, *, min_len: int = 2):
    """Validate a sampler's times: 1-D, strictly decreasing, inside the schedule.

    Returns them as a float array. Value checks run only on concrete inputs, so
    constructors stay traceable for gradients with respect to the times. The
    checks live in :func:`samplax.schedules.steps.validate_timesteps`, shared with
    the step schedules.
    """
    return validate_timesteps(schedule, timesteps, min_len=min_len)


def reaches_zero_noise(schedule, t) -> bool:
    """Whether ``t`` is (concretely) a time with ``sigma = 0``."""
    return is_concrete(t) and bool(np.isinf(np.asarray(schedule.lam(t))))


def analytic_first_output(builder, t0):
    """The analytical first step (AFS) output at ``t0``, costing no NFE.

    USF (Liu et al. 2023, sec. 3.1): near ``t_max`` the data is almost fully
    noised, so take ``x0_hat = E[x0] = 0`` (centred data) and hence
    ``eps_hat = x_T / sigma(t0)`` (for VP, ``sigma ~ 1`` gives ``eps_hat = x_T``).
    Returns an :class:`~samplax.solvers.plan.Output` to use in place of the
    first evaluation.
    """
    return builder.virtual_output(0.0, 1.0 / builder.schedule.sigma(t0), t0)
