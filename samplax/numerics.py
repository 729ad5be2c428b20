"""Numerically safe scalar helpers shared by every coefficient formula.

All functions are pure, jittable and differentiable, and stay finite when a
step reaches ``sigma = 0`` (``lam = inf``, so ``h = inf``): every formula in
samplax is written in ``exp(-h)`` or ``phi_k(-h)``, which tend to finite
limits there.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

# Below this |z| the phi-function recursion loses digits to cancellation;
# the Taylor series is used instead (25 terms reach float64 round-off).
_SERIES_RADIUS = 1.0
_SERIES_TERMS = 25


def phi(k: int, z):
    """The exponential-integrator function ``phi_k(z)``.

    ``phi_0(z) = e^z``, ``phi_1(z) = (e^z - 1)/z``,
    ``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z``; equivalently
    ``phi_k(z) = int_0^1 e^{(1-u)z} u^{k-1}/(k-1)! du``
    (Hochbruck & Ostermann 2010, eq. 2.10). Stable for small ``|z|`` (series)
    and at ``z = -inf`` (limit 0 for k >= 1), with NaN-free gradients.
    """
    if k < 0:
        raise ValueError(f"phi_k needs k >= 0, got {k}")
    z = jnp.asarray(z)
    if k == 0:
        return jnp.exp(z)
    small = jnp.abs(z) < _SERIES_RADIUS
    # Double-where: each branch only ever sees inputs on which it is finite,
    # so the unused branch cannot poison the gradient with NaN.
    zs = jnp.where(small, z, jnp.zeros_like(z))
    zb = jnp.where(small, jnp.ones_like(z), z)
    series = sum(zs**j / math.factorial(j + k) for j in range(_SERIES_TERMS))
    big = jnp.expm1(zb) / zb
    for j in range(1, k):
        big = (big - 1.0 / math.factorial(j)) / zb
    return jnp.where(small, series, big)


def safe_div(num, den):
    """``num/den`` where ``den != 0``, else 0, with finite gradients."""
    nz = den != 0
    return jnp.where(nz, num / jnp.where(nz, den, jnp.ones_like(den)), jnp.zeros_like(num))
