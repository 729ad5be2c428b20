"""Numerically safe scalar helpers shared by every coefficient formula.

All functions are pure, jittable and differentiable, and stay finite when a
step reaches ``sigma = 0`` (``lam = inf``, so ``h = inf``): every formula in
samplax is written in ``exp(-h)`` or ``phi_k(-h)``, which tend to finite
limits there.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# Below this |z| the phi-function recursion loses digits to cancellation; the
# Taylor series is used instead (20 terms: the next is below 1/21! ~ 2e-20).
_SERIES_RADIUS = 1.0
_SERIES_TERMS = 20


def phis(z, kmax: int):
    """``[phi_1(z), ..., phi_kmax(z)]`` stacked on a new last axis.

    ``phi_1(z) = (e^z - 1)/z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z``; equivalently
    ``phi_k(z) = int_0^1 e^{(1-u)z} u^{k-1}/(k-1)! du`` (Hochbruck & Ostermann
    2010, eq. 2.10). Stable for small ``|z|`` (one shared power series for all
    ``k``) and at ``z = -inf`` (limit 0), with NaN-free gradients.
    """
    if kmax < 1:
        raise ValueError(f"phis needs kmax >= 1, got {kmax}")
    z = jnp.asarray(z)
    small = jnp.abs(z) < _SERIES_RADIUS
    # Double-where: each branch only ever sees inputs on which it is finite,
    # so the unused branch cannot poison the gradient with NaN.
    zs = jnp.where(small, z, jnp.zeros_like(z))
    zb = jnp.where(small, jnp.ones_like(z), z)
    # z^j by a cumulative product (no pow: d/dz z^0 would be 0 * inf at z = 0)
    reps = jnp.broadcast_to(zs[..., None], zs.shape + (_SERIES_TERMS - 1,))
    powers = jnp.concatenate([jnp.ones_like(zs)[..., None], jnp.cumprod(reps, axis=-1)], -1)
    inv_fact = np.array(
        [[1.0 / math.factorial(j + k) for j in range(_SERIES_TERMS)] for k in range(1, kmax + 1)]
    )
    series = powers @ jnp.asarray(inv_fact.T, dtype=powers.dtype)
    big = [jnp.expm1(zb) / zb]
    for k in range(1, kmax):
        big.append((big[-1] - 1.0 / math.factorial(k)) / zb)
    return jnp.where(small[..., None], series, jnp.stack(big, -1))


def phi(k: int, z):
    """The exponential-integrator function ``phi_k(z)`` (``phi_0 = exp``); see :func:`phis`."""
    if k < 0:
        raise ValueError(f"phi_k needs k >= 0, got {k}")
    if k == 0:
        return jnp.exp(jnp.asarray(z))
    return phis(z, k)[..., k - 1]


def safe_div(num, den):
    """``num/den`` where ``den != 0``, else 0, with finite gradients."""
    nz = den != 0
    return jnp.where(nz, num / jnp.where(nz, den, jnp.ones_like(den)), jnp.zeros_like(num))
