"""Timesteps by dynamic programming over a time grid (GITS, Chen et al. 2024).

Chen, Zhou, Wu, Tang & Lin, "On the Trajectory Regularity of ODE-based Diffusion
Sampling", ICML 2024 (GITS), and BOSS (Nie et al. 2023) pose timestep selection as
a shortest path: on a fine grid ``g_0 > .. > g_G`` (here uniform in ``lam``) the
teacher's states ``X_i`` at every grid time are known once, the cost of one solver
step from ``g_i`` to ``g_j`` is its local error against ``X_j``, and dynamic
programming finds the path ``g_0 -> g_G`` of exactly ``n`` steps with the least
summed cost in ``O(n G^2)``.

The step is DDIM (first order, exact linear part; DESIGN notation, ``h = lam_j -
lam_i``)::

    x_j = (sigma_j/sigma_i) X_i + alpha_j (1 - e^{-h}) D(X_i, g_i),

so the ``G (G + 1)/2`` step costs take only ``G`` network evaluations per sample (one
at every grid point). GITS reports that the times found for DDIM also serve
higher-order solvers (iPNDM) well; samplax uses them as a starting point for the
search (:class:`samplax.search.SearchConfig`'s ``dp_grid``) and as a baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.reference import reference_solve
from samplax.schedules.steps import uniform_logsnr, validate_timesteps


def ddim_step_costs(denoiser, schedule, grid, states) -> np.ndarray:
    """``[G + 1, G + 1]`` costs: entry ``(i, j)``, ``i < j``, is the mean per-sample RMSE
    of one DDIM step from ``(states[i], grid[i])`` to ``grid[j]`` against
    ``states[j]``; ``inf`` elsewhere. ``states``: ``[G + 1, batch, ...]``."""
    grid = jnp.asarray(grid)
    alpha, sigma = schedule.alpha(grid), schedule.sigma(grid)
    G = grid.shape[0] - 1

    def row(i):
        x_i = states[i]
        d_i = denoiser(x_i, grid[i])
        # sigma_i > 0 for i < G (only the last grid time may have sigma = 0)
        r = sigma / sigma[i]
        shape = (-1,) + (1,) * x_i.ndim
        est = r.reshape(shape) * x_i[None] + (alpha - r * alpha[i]).reshape(shape) * d_i[None]
        err = (est - states).reshape(G + 1, x_i.shape[0], -1)
        return jnp.mean(jnp.sqrt(jnp.mean(err**2, axis=-1)), axis=-1)

    costs = np.asarray(jax.lax.map(row, jnp.arange(G)), float)
    costs = np.concatenate([costs, np.full((1, G + 1), np.inf)])
    costs[np.tril_indices(G + 1)] = np.inf
    return costs


def shortest_path(costs: np.ndarray, n_steps: int) -> tuple[list[int], float]:
    """The path ``0 -> G`` of exactly ``n_steps`` edges with the least summed cost.

    ``costs[i, j]`` is the cost of the edge ``i -> j`` (``inf``: no edge). Returns the
    node indices (``n_steps + 1`` of them) and the total cost.
    """
    G = costs.shape[0] - 1
    if not 1 <= n_steps <= G:
        raise ValueError(f"n_steps must be in 1..{G} (the grid's intervals), got {n_steps}")
    best = np.full(G + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((n_steps, G + 1), int)
    for k in range(n_steps):
        total = best[:, None] + costs  # [from, to]
        back[k] = np.argmin(total, axis=0)
        best = total[back[k], np.arange(G + 1)]
    if not np.isfinite(best[G]):
        raise ValueError("no finite path of that many steps through the grid")
    path = [G]
    for k in range(n_steps - 1, -1, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1], float(best[G])


def dp_timesteps(denoiser, schedule, n_steps: int, x_T, *, t_start, t_end, grid=64,
                 states=None):
    """GITS timesteps: ``n_steps + 1`` times on a grid that minimize the summed local
    DDIM error along the teacher's trajectories from ``x_T`` (module docstring).

    Args:
        denoiser, schedule: the model.
        n_steps: steps of the returned schedule.
        x_T: ``[batch, ...]`` calibration noises at ``t_start`` (a few dozen suffice).
        t_start, t_end: the fixed ends.
        grid: the number of grid intervals (uniform in ``lam``), or the grid's times.
        states: the teacher's states at the grid times ``[G + 1, batch, ...]``;
            default: :func:`samplax.models.reference_solve` from ``x_T``.

    Returns:
        ``(times [n_steps + 1], total cost)``.
    """
    if isinstance(grid, int):
        grid = uniform_logsnr(schedule, grid, t_start=t_start, t_end=t_end)
    grid = validate_timesteps(schedule, grid)
    if abs(float(grid[0]) - float(t_start)) > 1e-12 or abs(float(grid[-1]) - float(t_end)) > 1e-12:
        raise ValueError("the grid must start at t_start and end at t_end")
    if states is None:
        states = jax.jit(lambda x: reference_solve(denoiser, schedule, x, grid))(x_T)
    if states.shape[0] != grid.shape[0]:
        raise ValueError(f"states has {states.shape[0]} grid times, the grid {grid.shape[0]}")
    path, total = shortest_path(ddim_step_costs(denoiser, schedule, grid, states), n_steps)
    return grid[jnp.asarray(path)], total


__all__ = ["ddim_step_costs", "dp_timesteps", "shortest_path"]
