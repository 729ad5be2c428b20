"""Shared pieces of the guidance transforms: broadcasting, prediction spaces, step lookup.

Conventions (DESIGN.md): ``x_t = alpha x0 + sigma eps``; a denoiser is
``D(x, t) -> x0_hat`` with the batch on the leading axis of ``x``; ``t`` is a
scalar (or a ``[batch]`` vector for per-sample times). Per-sample statistics
(norms, standard deviations, quantiles) reduce over every axis but the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.numerics import safe_div
from samplax.schedules.base import describe, real_values

Array = Any
SPACES = ("x0", "eps", "v")


def bcast(v, x):
    """Reshape a scalar or ``[batch]`` value so that it broadcasts against ``x``."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def coefficients(schedule, t, x):
    """``alpha(t)``, ``sigma(t)`` shaped to broadcast against ``x``."""
    return bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)


def weight_at(w, t):
    """A guidance weight that may be a constant or a function of the time ``t``."""
    return w(t) if callable(w) else w


def check_callable(owner: str, name: str, f, what: str = "a denoiser D(x, t)") -> None:
    """``f`` must be callable; the ``TypeError`` names ``owner``'s argument ``name``."""
    if not callable(f):
        raise TypeError(f"{owner}: {name} must be {what} (a callable), got {describe(f)}")


def check_weight(owner: str, name: str, w) -> None:
    """A guidance weight: a finite real number (or per-sample ``[batch]`` array) or a
    function ``w(t)``. Values are checked only when concrete."""
    if callable(w):
        return
    what = "a finite real number, a [batch] array of them, or a function w(t)"
    v = real_values(owner, name, w, what=what)
    if v is not None and v.ndim > 1:
        raise ValueError(f"{owner}: {name} must be {what}, got shape {v.shape}")


def weight_for(name: str, w, t, x):
    """``w`` (or ``w(t)``) shaped against ``x``, after checking that it is a scalar or
    one value per sample (shapes are static: this runs while tracing)."""
    v = jnp.asarray(weight_at(w, t))
    n = x.shape[0] if x.ndim else 1
    if v.ndim > max(x.ndim, 1) or (v.ndim and v.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a single number or one value per sample (leading "
                         f"axis {n}, the batch), got shape {v.shape} for x of shape {x.shape}")
    return bcast(v, x)


def check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    return space


def to_space(space: str, schedule, x, t, d):
    """Express a data prediction ``d = x0_hat`` as a prediction in ``space``.

    ``eps = (x - alpha x0)/sigma``; ``v = alpha eps - sigma x0`` (Salimans & Ho 2022).
    """
    if space == "x0":
        return d
    a, s = coefficients(schedule, t, x)
    eps = safe_div(x - a * d, s)
    if space == "eps":
        return eps
    return a * eps - s * d


def from_space(space: str, schedule, x, t, y):
    """Inverse of :func:`to_space`: the data prediction ``x0_hat`` for ``y`` in ``space``."""
    if space == "x0":
        return y
    a, s = coefficients(schedule, t, x)
    if space == "eps":
        return (x - s * y) / a
    # x = a x0 + s eps and v = a eps - s x0  =>  a x - s v = (a^2 + s^2) x0
    return (a * x - s * y) / (a * a + s * s)


def feature_sum(v):
    """Sum over every axis but the first (the batch), keeping dims for broadcasting."""
    return jnp.sum(v, axis=tuple(range(1, v.ndim)), keepdims=True)


def feature_std(v):
    n = v[0].size
    mean = feature_sum(v) / n
    return jnp.sqrt(feature_sum((v - mean) ** 2) / n)


def safe_norm(v):
    """Per-sample Euclidean norm (keepdims) with a finite gradient at 0."""
    sq = feature_sum(v * v)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def time_key(key, t):
    """A PRNG key that depends on ``key`` and on the (first) time value ``t``.

    Used by transforms that need fresh randomness at every step but only see
    ``(x, t)`` (CADS, TFG's implicit dynamics): the float32 bits of ``t`` are
    folded into ``key``, so each distinct time gets its own draw.
    """
    t32 = jnp.ravel(jnp.asarray(t))[0].astype(jnp.float32)
    return jax.random.fold_in(key, jax.lax.bitcast_convert_type(t32, jnp.uint32))


class NextStep(eqx.Module):
    """The DDIM step that starts at an evaluation time, for transforms that need it.

    Some guidance methods are defined as changes to the *next state* of a
    first-order sampler rather than to ``x0_hat``: CFG++ renoises with the
    unconditional noise, DPS and TFG add a gradient to ``x_{t-1}``. For the
    DDIM(eta) step ``s -> t`` (``h = lam_t - lam_s``)::

        x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z,   eps = (x_s - alpha_s x0)/sigma_s,
        c = eta sigma_t sqrt(1 - e^{-2h}),

    the data prediction enters ``x_t`` with weight ``alpha_t g`` where
    ``g = 1 - e^{-h} sqrt(1 - eta^2 (1 - e^{-2h}))`` (``1 - e^{-h}`` for eta = 0).
    So a change ``dx`` of ``x_t`` is the change ``dx / (alpha_t g)`` of ``x0_hat``,
    and a change ``d0`` of ``x0`` *with eps held fixed* is ``d0 / g``. This
    object maps an evaluation time ``s`` (one of ``timesteps[:-1]``; the nearest
    is taken) to ``alpha_t`` and ``g``.

    Exact for DDIM (``samplax.solvers.ddim.ddim`` for eta = 0,
    :func:`samplax.guidance.recurrent_ddim` for any eta) and hence for Euler in
    the EDM view. Other solvers evaluate at other points or combine several
    outputs: there the conversion is the natural first-order extension, not the
    papers' method.
    """

    schedule: Any
    timesteps: Array
    eta: float = 0.0

    def __call__(self, t):
        ts = jnp.asarray(self.timesteps)
        t = jnp.asarray(t)
        idx = jnp.argmin(jnp.abs(ts[:-1] - t[..., None]), axis=-1)
        s, nxt = ts[idx], ts[idx + 1]
        h = self.schedule.lam(nxt) - self.schedule.lam(s)
        e = jnp.exp(-h)  # 0 when the step reaches sigma = 0
        gain = 1.0 - e * jnp.sqrt(1.0 - self.eta**2 * (1.0 - e * e))
        return self.schedule.alpha(nxt), gain


def grad_sum(f: Callable, x):
    """Per-sample gradients of a per-sample scalar function ``f(x) -> [batch]``."""
    return jax.grad(lambda v: jnp.sum(f(v)))(x)
