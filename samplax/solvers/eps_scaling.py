"""Epsilon scaling (Ning, Li, Su, Salah & Ertugrul 2024): shrink the noise prediction.

Ning et al., "Elucidating the Exposure Bias in Diffusion Models", ICLR 2024
(arXiv:2308.15321), "Epsilon Scaling". Sampled states drift to a higher
noise level than training states at the same time (exposure bias), so the
network's noise prediction is too large; dividing it by a factor slightly above
1 moves the sampling trajectory back (DESIGN notation)::

    eps_hat(x, t) <- eps_hat(x, t) / b(t),     b(t) = k t + b0,

i.e. ``x0_hat <- (x - sigma_t eps_hat/b)/alpha_t = x0_hat/b + (1 - 1/b) x/alpha_t``
(no division by ``sigma``: defined at ``sigma = 0``). ``k = 0`` (a constant
factor) is the common choice; the paper reports ``b0`` about 1.005-1.017 for
ADM and 1.0005-1.006 for EDM Heun (depending on NFE). ``b = 1`` is the model
unchanged. A denoiser transform: works with every plan, no extra NFE.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import describe, real_values


def _bcast(v, x):
    v = jnp.asarray(v).astype(x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def linear_factor(b0: float = 1.005, k: float = 0.0, time_fn: Callable | None = None) -> Callable:
    """``b(t) = k u(t) + b0`` with ``u = time_fn(t)`` (default the schedule's time ``t``).

    Pass e.g. ``time_fn=schedule.label`` to have ``k`` per training step of a
    :class:`~samplax.schedules.DiscreteVP`, as the paper's ``t`` in 0..999.
    """

    def b(t):
        u = jnp.asarray(t) if time_fn is None else time_fn(t)
        return k * u + b0

    return b


def eps_scaling(denoiser: Callable, schedule, factor: float | Callable = 1.005) -> Callable:
    """Wrap ``denoiser`` so that its noise prediction is divided by ``factor`` (module docstring).

    Args:
        denoiser: ``D(x, t) -> x0_hat`` (scalar or per-sample ``[batch]`` times).
        schedule: the noise schedule of ``t``.
        factor: a constant ``b0`` or a function ``b(t)`` (see :func:`linear_factor`).

    Returns:
        The scaled denoiser ``D'(x, t) = D/b + (1 - 1/b) x/alpha_t``.
    """
    if not callable(denoiser):
        raise TypeError(f"eps_scaling: denoiser must be a callable D(x, t), got "
                        f"{describe(denoiser)}")
    if not callable(factor):
        v = real_values("eps_scaling", "factor", factor,
                        what="a finite number > 0 (or a function b(t))")
        if v is not None and not np.all(v > 0):
            raise ValueError(f"eps_scaling: factor must be a finite number > 0 (or a function "
                             f"b(t)), got {describe(factor)}")
    b_fn = factor if callable(factor) else (lambda t, v=factor: jnp.asarray(v))

    def D(x, t):
        inv = 1.0 / _bcast(b_fn(t), x)
        return denoiser(x, t) * inv + (1.0 - inv) * x / _bcast(schedule.alpha(t), x)

    return D


__all__ = ["eps_scaling", "linear_factor"]
