"""Shared pieces of the solver constructors: time validation and step geometry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer): checks on values are possible."""
    return not isinstance(x, jax.core.Tracer)


def check_timesteps(schedule, timesteps, *, min_len: int = 2):
    """Validate a sampler's times: 1-D, strictly decreasing, inside the schedule.

    Returns them as a float array. Value checks run only on concrete inputs, so
    constructors stay traceable for gradients with respect to the times.
    """
    ts = jnp.asarray(timesteps)
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    if ts.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D array, got shape {ts.shape}")
    if ts.shape[0] < min_len:
        raise ValueError(f"need at least {min_len} timesteps (one step), got {ts.shape[0]}")
    if is_concrete(ts):
        v = np.asarray(ts)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"timesteps must be finite, got {v}")
        if not np.all(np.diff(v) < 0):
            i = int(np.argmax(np.diff(v) >= 0))
            raise ValueError(
                "timesteps must be strictly decreasing (noise to data); "
                f"t[{i}]={v[i]:.6g} is followed by t[{i + 1}]={v[i + 1]:.6g}"
            )
        lo, hi = schedule.t_lo, schedule.t_hi
        tol = 1e-9 * max(1.0, abs(hi))
        if v[0] > hi + tol or v[-1] < lo - tol:
            raise ValueError(
                f"timesteps [{v[0]:.6g} .. {v[-1]:.6g}] leave the schedule's range "
                f"[{lo:.6g}, {hi:.6g}]"
            )
        lam = np.asarray(schedule.lam(ts[:-1]))
        if not np.all(np.isfinite(lam)):
            raise ValueError(
                "only the last timestep may have sigma = 0 (lam = inf); "
                f"got lam = {lam}"
            )
    return ts


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
