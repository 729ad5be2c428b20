"""Brownian noise for stochastic samplers: one path per sample, consistent across step counts.

A stochastic plan adds ``c_k z_k`` in NFE slot ``k``. By default the executor draws
every ``z_k`` independently (``fold_in(key, k)``, then ``fold_in(., row)``). The
stochastic solvers of samplax also declare, for every draw, the interval of the
schedule's time ``[t_a, t_b]`` (usually the step ``[t_{i+1}, t_i]``) whose noise it
stands for (:attr:`samplax.solvers.plan.Plan.noise_span`). :class:`BrownianNoise`
then returns the normalized increment of one Brownian path ``W`` per sample::

    z_k = (W(t_b) - W(t_a)) / sqrt(t_b - t_a),

with ``W`` a :class:`diffrax.VirtualBrownianTree` keyed by ``fold_in(key, row)``
(k-diffusion's ``BrownianTreeNoiseSampler`` does the same with ``torchsde``). Spans
of one plan are disjoint, so the ``z_k`` are independent standard normals: a
sampler has the same law with either noise. What changes is the coupling across
plans: the same key gives the *same path* whatever the step count, so a sampler's
output converges pathwise (strongly) as the steps are refined instead of
changing completely with every step count.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

Array = Any


class BrownianNoise(eqx.Module):
    """Noise source for :func:`samplax.sample` (``noise=``) backed by a virtual Brownian tree.

    Attributes:
        t0, t1: the time range the path covers, e.g. the schedule's ``[t_lo, t_hi]``
            (:meth:`for_schedule`). Every plan sampled with this source must keep
            its spans inside it, and plans that should share paths must use the
            same ``t0``, ``t1`` and ``tol`` (they define the tree).
        tol: resolution of the tree (bisection stops below it); ``None`` =
            ``(t1 - t0) * 2^-30``.
    """

    t0: float
    t1: float
    tol: float | None = None

    @classmethod
    def for_schedule(cls, schedule, tol: float | None = None) -> BrownianNoise:
        """A Brownian path over the whole schedule, ``[t_lo, t_hi]``."""
        return cls(float(schedule.t_lo), float(schedule.t_hi), tol)

    def __call__(self, key, span, shape, dtype) -> Array:
        t0, t1 = float(self.t0), float(self.t1)
        tol = (t1 - t0) * 2.0**-30 if self.tol is None else float(self.tol)
        span = jax.lax.stop_gradient(jnp.asarray(span))
        lo = jnp.clip(jnp.minimum(span[0], span[1]), t0, t1)
        hi = jnp.clip(jnp.maximum(span[0], span[1]), t0, t1)
        length = hi - lo
        # A slot without noise has span (0, 0): its increment is 0 (and so is its
        # coefficient); never divide by 0.
        scale = jnp.where(length > 0, 1.0 / jnp.sqrt(jnp.where(length > 0, length, 1.0)), 0.0)

        def one(row_key, row_shape):
            tree = diffrax.VirtualBrownianTree(
                t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(row_shape, dtype), key=row_key
            )
            return tree.evaluate(lo, hi)

        if len(shape) == 0:
            return (one(key, ()) * scale).astype(dtype)
        rows = jnp.arange(shape[0])
        w = jax.vmap(lambda i: one(jax.random.fold_in(key, i), tuple(shape[1:])))(rows)
        return (w * scale).astype(dtype)


__all__ = ["BrownianNoise"]
