"""CADS: condition-annealed sampling (Sadat et al. 2024, "CADS: unleashing the diversity
of diffusion models through condition-annealed sampling")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from samplax.guidance._common import check_callable, feature_std, feature_sum, time_key
from samplax.schedules.base import describe, is_concrete, real_values
from samplax.solvers.executor import sample_noise

Array = Any


class CADS(eqx.Module):
    """Anneal a condition with Gaussian noise: a transform ``(cond, t) -> cond``.

    It acts on the *condition* (an embedding), not on the prediction. With the
    sampling progress ``tau = t/t_max`` (1 at the start, 0 at the end)::

        gamma(tau) = clip((tau2 - tau)/(tau2 - tau1), 0, 1)   (1 below tau1, 0 above tau2)
        c_hat = sqrt(gamma) c + s sqrt(1 - gamma) n,     n ~ N(0, I),

    and, with ``psi > 0``, the paper's rescale: ``c_res = (c_hat - mean(c_hat))/
    std(c_hat) std(c) + mean(c)``, ``c_hat <- psi c_res + (1 - psi) c_hat``
    (per sample, over the non-batch axes of each condition leaf). Fresh noise
    at every distinct time, drawn from ``key`` folded with ``t``; per-sample
    rows are independent. Pass it as ``anneal`` to
    :func:`~samplax.guidance.branches` or wrap a model with :func:`cads_model`.
    """

    key: Array
    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = eqx.field(default=1.0, static=True)
    t_max: float = 1.0

    def gamma(self, t):
        tau = jnp.asarray(t) / self.t_max
        ramp = (self.tau2 - tau) / (self.tau2 - self.tau1)
        return jnp.clip(ramp, 0.0, 1.0)

    def __call__(self, cond, t):
        g = self.gamma(jnp.ravel(jnp.asarray(t))[0])
        k = time_key(self.key, t)
        leaves, tree = jax.tree.flatten(cond)
        out = []
        for i, c in enumerate(leaves):
            c = jnp.asarray(c)
            if not jnp.issubdtype(c.dtype, jnp.floating):
                raise TypeError("CADS anneals continuous conditions (embeddings), got "
                                f"dtype {c.dtype}")
            n = sample_noise(jax.random.fold_in(k, i), c.shape, c.dtype)
            c_hat = jnp.sqrt(g) * c + self.noise_scale * jnp.sqrt(1.0 - g) * n
            if self.psi and c.ndim > 1:
                size = c[0].size
                m0, s0 = feature_sum(c) / size, feature_std(c)
                m1, s1 = feature_sum(c_hat) / size, feature_std(c_hat)
                c_res = (c_hat - m1) / jnp.where(s1 > 0, s1, 1.0) * s0 + m0
                c_hat = self.psi * c_res + (1.0 - self.psi) * c_hat
            out.append(c_hat)
        return jax.tree.unflatten(tree, out)


def _check_key(key) -> None:
    """A PRNG key: ``jax.random.key(seed)`` or a legacy ``uint32 [2]`` ``PRNGKey``."""
    if not is_concrete(key):
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.ndim == 0:
            return
    elif dtype == np.uint32 and getattr(key, "shape", None) == (2,):
        return
    raise TypeError(f"cads: key must be a single PRNG key (jax.random.key(seed)), got "
                    f"{describe(key)}")


def cads(
    key,
    *,
    tau1: float = 0.6,
    tau2: float = 0.9,
    noise_scale: float = 0.25,
    psi: float = 1.0,
    t_max: float = 1.0,
) -> CADS:
    """CADS condition annealing with the paper's defaults (tau1 0.6, tau2 0.9, s 0.25).

    ``t_max`` maps the schedule's time to the progress ``tau = t/t_max``; ``psi = 0``
    disables the rescale. The rescale needs per-sample features (a condition leaf
    of rank >= 2, ``[batch, ...]``).

    Example::

        b = branches(model, text_emb, null_emb, anneal=cads(jax.random.key(1)))
        den = cfg(b, 7.5)
    """
    _check_key(key)
    for name, v in (("tau1", tau1), ("tau2", tau2), ("psi", psi)):
        real_values("cads", name, v, finite=False, what="a number")
    if not 0.0 <= tau1 < tau2 <= 1.0:
        raise ValueError(f"need 0 <= tau1 < tau2 <= 1, got {tau1}, {tau2}")
    real_values("cads", "noise_scale", noise_scale, what="a finite number (the noise std s)")
    tm = real_values("cads", "t_max", t_max, what="a finite number > 0")
    if tm is not None and not np.all(tm > 0):
        raise ValueError(f"cads: t_max must be a finite number > 0 (the time where sampling "
                         f"starts; progress is t/t_max), got {describe(t_max)}")
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"psi must lie in [0, 1], got {psi}")
    return CADS(key, tau1, tau2, noise_scale, float(psi), t_max)


class CADSModel(eqx.Module):
    """``model(x, t, cond)`` with its condition annealed by a :class:`CADS`."""

    model: Callable
    anneal: CADS

    def __call__(self, x, t, cond):
        return self.model(x, t, self.anneal(cond, t))


def cads_model(model: Callable, anneal: CADS) -> CADSModel:
    """Wrap a conditional model so that every condition it receives is annealed."""
    check_callable("cads_model", "model", model, "a conditional model model(x, t, cond)")
    check_callable("cads_model", "anneal", anneal, "a CADS from cads(key)")
    return CADSModel(model, anneal)
