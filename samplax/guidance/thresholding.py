"""Thresholding of the x0 prediction: static clipping and Imagen's dynamic thresholding."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from samplax.guidance._common import check_callable
from samplax.guidance.cost import Cost, cost_of
from samplax.schedules.base import describe, real_values


class StaticThreshold(eqx.Module):
    """Static thresholding (Saharia et al. 2022, Imagen): ``clip(x0, lo, hi)``.

    Acts in x0 space on the wrapped denoiser's output; no extra network cost.
    """

    denoiser: Callable
    lo: float = -1.0
    hi: float = 1.0

    def __call__(self, x, t):
        return jnp.clip(self.denoiser(x, t), self.lo, self.hi)

    @property
    def cost(self) -> Cost:
        return cost_of(self.denoiser)


class DynamicThreshold(eqx.Module):
    """Dynamic thresholding (Saharia et al. 2022, Imagen).

    Acts in x0 space: per sample, ``s`` is the ``p``-quantile of ``|x0_hat|`` over
    all non-batch axes, raised to at least 1 and capped at ``max_value``
    (diffusers' ``sample_max_value``; ``inf`` is Imagen's rule), and
    ``x0_hat <- clip(x0_hat, -s, s)/s``. The result lies in ``[-1, 1]``, and a
    prediction already inside ``[-1, 1]`` is left unchanged.
    """

    denoiser: Callable
    p: float = 0.995
    max_value: float = float("inf")

    def __call__(self, x, t):
        d = self.denoiser(x, t)
        flat = jnp.abs(d.reshape(d.shape[0], -1))
        s = jnp.quantile(flat, self.p, axis=-1)
        s = jnp.clip(s, 1.0, self.max_value).reshape((-1,) + (1,) * (d.ndim - 1))
        return jnp.clip(d, -s, s) / s

    @property
    def cost(self) -> Cost:
        return cost_of(self.denoiser)


def static_threshold(denoiser: Callable, lo: float = -1.0, hi: float = 1.0) -> StaticThreshold:
    """Clip the x0 prediction to ``[lo, hi]`` (data in ``[-1, 1]`` by default).

    Example::

        den = static_threshold(cfg(b, 7.0))
    """
    check_callable("static_threshold", "denoiser", denoiser)
    real_values("static_threshold", "lo", lo, finite=False, what="a number")
    real_values("static_threshold", "hi", hi, finite=False, what="a number")
    if not lo < hi:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    return StaticThreshold(denoiser, float(lo), float(hi))


def dynamic_threshold(
    denoiser: Callable, p: float = 0.995, max_value: float = float("inf")
) -> DynamicThreshold:
    """Imagen's dynamic thresholding with percentile ``p`` and cap ``max_value``.

    Example::

        den = dynamic_threshold(cfg(b, 10.0), p=0.995)
    """
    check_callable("dynamic_threshold", "denoiser", denoiser)
    pv = real_values("dynamic_threshold", "the percentile p", p, what="a number in (0, 1]")
    mv = real_values("dynamic_threshold", "max_value", max_value, finite=False,
                     what="a number >= 1 (inf: no cap)")
    if pv is None or mv is None:
        raise TypeError("dynamic_threshold: p and max_value must be concrete numbers, got a "
                        "traced value")
    if pv.ndim or mv.ndim:
        raise ValueError(f"dynamic_threshold: p and max_value must be scalars, got "
                         f"{describe(p)}, {describe(max_value)}")
    p, max_value = float(pv), float(mv)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"the percentile p must lie in (0, 1], got {p}")
    if not max_value >= 1.0:
        raise ValueError(f"max_value must be at least 1, got {max_value}")
    return DynamicThreshold(denoiser, float(p), float(max_value))
