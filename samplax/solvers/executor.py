"""The one executor: run any :class:`~samplax.solvers.plan.Plan` as a ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from samplax.numerics import safe_div
from samplax.solvers.plan import Combo, Plan

Array = Any
Denoiser = Callable[[Array, Array], Array]


def sample_noise(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Standard normal noise whose row ``i`` depends only on ``(key, i)``.

    The leading axis is the batch: a sample's noise does not change when the
    batch grows or shrinks, so results are reproducible per sample.
    """
    if len(shape) == 0:
        return jax.random.normal(key, shape, dtype)
    idx = jnp.arange(shape[0])
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape[1:], dtype))(
        idx
    )


def _combine(c: Combo, x, D, E, z, dtype):
    out = c.x.astype(dtype) * x
    if D.shape[0]:
        out = out + jnp.tensordot(c.d.astype(dtype), D, axes=1)
    if E.shape[0]:
        out = out + jnp.tensordot(c.e.astype(dtype), E, axes=1)
    if z is not None:
        out = out + c.z.astype(dtype) * z
    return out


def sample(
    denoiser: Denoiser,
    plan: Plan,
    x_T: Array,
    key: Array | None = None,
    *,
    return_trajectory: bool = False,
):
    """Draw samples by running ``plan`` from the initial noise ``x_T``.

    Args:
        denoiser: ``denoiser(x, t) -> x0_hat`` with ``x`` of the shape of ``x_T``
            and ``t`` a scalar time of the plan's noise schedule (see
            :mod:`samplax.models.adapters` to wrap epsilon, v, flow or score models).
        plan: a plan from any solver constructor (``samplax.dpm_solver_pp(...)``).
        x_T: initial state at the plan's first time, e.g.
            ``sigma(t_0) * jax.random.normal(key, shape)`` for a VP model.
        key: PRNG key; required when the plan is stochastic. Slot ``k`` draws
            its noise from ``fold_in(key, k)`` and per batch row ``i`` from
            ``fold_in(., i)``.
        return_trajectory: also return the anchor after each NFE slot, ``[K, ...]``.

    Returns:
        The sample (same shape and dtype as ``x_T``), and the trajectory if asked.
    """
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be a floating-point array, got dtype {x_T.dtype}")
    if plan.t.ndim != 1:
        raise ValueError(
            f"plan has batch axes {plan.t.shape[:-1]}; vmap sample() over stacked plans"
        )
    if plan.stochastic and key is None:
        raise ValueError("this plan is stochastic: pass a PRNG key, e.g. jax.random.key(0)")
    dtype = x_T.dtype
    hd = plan.evaluate.d.shape[-1]
    he = plan.evaluate.e.shape[-1]
    D0 = plan.init_d.astype(dtype)[(...,) + (None,) * x_T.ndim] * x_T[None]
    E0 = plan.init_e.astype(dtype)[(...,) + (None,) * x_T.ndim] * x_T[None]
    K = plan.nfe

    def noise(k):
        if not plan.stochastic:
            return None
        return sample_noise(jax.random.fold_in(key, k), x_T.shape, dtype)

    def body(carry, slot):
        x, D, E = carry
        k, t, alpha, sigma, ce, cu = slot
        z = noise(k)
        x_eval = _combine(ce, x, D, E, z, dtype)
        d = jnp.asarray(denoiser(x_eval, t)).astype(dtype)
        if d.shape != x_eval.shape:
            raise ValueError(
                f"denoiser returned shape {d.shape} for input of shape {x_eval.shape}"
            )
        if hd:
            D = jax.lax.dynamic_update_index_in_dim(D, d, k % hd, 0)
        if he:
            # At sigma = 0 eps_hat is undefined; no plan may use it there, and the
            # safe division keeps the buffer (and its gradient) finite.
            e = safe_div(x_eval - alpha.astype(dtype) * d, sigma.astype(dtype))
            E = jax.lax.dynamic_update_index_in_dim(E, e, k % he, 0)
        x = _combine(cu, x, D, E, z, dtype)
        return (x, D, E), (x if return_trajectory else None)

    slots = (jnp.arange(K), plan.t, plan.alpha, plan.sigma, plan.evaluate, plan.update)
    (x, D, E), traj = jax.lax.scan(body, (x_T, D0, E0), slots)
    out = _combine(plan.final, x, D, E, noise(K), dtype)
    return (out, traj) if return_trajectory else out
