"""Shared harness: empirical convergence order of a solver against the diffrax reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models import GaussianMixture, reference_solve
from samplax.schedules import VPLinear
from samplax.solvers.executor import sample


@functools.cache
def problem(dim: int = 4, n: int = 32, t_end: float = 1e-3):
    """A well-separated 3-component mixture under VP-linear, its noise and reference."""
    schedule = VPLinear()
    means = jnp.array([[1.5, -1.0, 0.5, 0.0], [-1.0, 1.0, -0.5, 1.0], [0.0, -1.5, 1.5, -1.0]])
    data = GaussianMixture.diagonal(
        jnp.array([0.3, 0.3, 0.4]), means[:, :dim], jnp.array([0.25, 0.16, 0.36])
    )
    x_T = jax.random.normal(jax.random.key(0), (n, dim), jnp.float64)
    ref = reference_solve(data.denoiser(schedule), schedule, x_T, jnp.array([1.0, t_end]))[-1]
    return schedule, data, x_T, ref


def logsnr_times(schedule, n_steps: int, t_start=1.0, t_end=1e-3):
    lam = jnp.linspace(schedule.lam(t_start), schedule.lam(t_end), n_steps + 1)
    ts = schedule.t_of_lam(lam)
    return ts.at[0].set(t_start).at[-1].set(t_end)


def errors(make_plan, nfes, *, dim=4, t_end=1e-3):
    """Median per-sample RMSE against the reference for plans built by ``make_plan``.

    ``make_plan(schedule, n)`` returns a plan; ``nfes`` lists the values of ``n``.
    """
    schedule, data, x_T, ref = problem(dim, t_end=t_end)
    den = data.denoiser(schedule)
    run = jax.jit(sample, static_argnums=0)
    out = []
    for n in nfes:
        plan = make_plan(schedule, n)
        x = run(den, plan, x_T)
        out.append(float(jnp.median(jnp.sqrt(jnp.mean((x - ref) ** 2, -1)))))
    return np.array(out)


def fitted_order(make_plan, nfes, *, cost=None, **kw) -> float:
    """Slope of ``-log(error)`` against ``log(NFE)`` (or ``log(cost)`` if given)."""
    err = errors(make_plan, nfes, **kw)
    x = np.log(np.asarray(cost if cost is not None else nfes, float))
    return float(-np.polyfit(x, np.log(err), 1)[0]), err
