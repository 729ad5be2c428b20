"""Timesteps by dynamic programming (GITS): exact shortest paths, and better DDIM times."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.metrics import per_sample_rmse
from samplax.models import GaussianMixture, reference_solve
from samplax.schedules import VPLinear, time_quadratic, uniform_logsnr
from samplax.search.dp import ddim_step_costs, dp_timesteps, shortest_path
from samplax.solvers import ddim, sample

S = VPLinear()
T0, T1 = 1.0, 1e-3


def test_shortest_path_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    G = 8
    costs = rng.uniform(0.1, 1.0, (G + 1, G + 1))
    costs[np.tril_indices(G + 1)] = np.inf
    for n in (1, 2, 3, 5, 8):
        path, total = shortest_path(costs, n)
        brute = min(
            (sum(costs[a, b] for a, b in zip((0, *mid), (*mid, G), strict=True)), (0, *mid, G))
            for mid in itertools.combinations(range(1, G), n - 1)
        )
        assert len(path) == n + 1 and path[0] == 0 and path[-1] == G
        assert total == pytest.approx(brute[0], abs=1e-12)
        assert tuple(path) == brute[1]


def test_shortest_path_rejects_impossible_step_counts():
    costs = np.full((5, 5), np.inf)
    costs[np.triu_indices(5, 1)] = 1.0
    with pytest.raises(ValueError, match="n_steps must be in 1..4"):
        shortest_path(costs, 5)
    with pytest.raises(ValueError, match="n_steps must be in 1..4"):
        shortest_path(costs, 0)


@pytest.fixture(scope="module")
def mixture():
    k = jax.random.split(jax.random.key(3), 2)
    means = 2.0 * jax.random.normal(k[0], (4, 8))
    var = jnp.exp(0.5 * jax.random.normal(k[1], (4, 8))) * 0.1
    return GaussianMixture.diagonal(jnp.ones(4) / 4, means, var)


def test_step_costs_match_a_direct_ddim_step(mixture):
    den = mixture.denoiser(S)
    grid = uniform_logsnr(S, 6, t_start=T0, t_end=T1)
    x = jax.random.normal(jax.random.key(0), (16, 8))
    states = reference_solve(den, S, x, grid)
    costs = ddim_step_costs(den, S, grid, states)
    for i, j in ((0, 1), (0, 6), (2, 5), (5, 6)):
        one = sample(den, ddim(S, jnp.stack([grid[i], grid[j]])), states[i])
        want = float(jnp.mean(per_sample_rmse(one, states[j])))
        assert costs[i, j] == pytest.approx(want, rel=1e-10)
    assert np.all(np.isinf(costs[np.tril_indices(7)]))


def test_dp_times_beat_hand_made_ddim_times_on_held_out_noise(mixture):
    """The DP optimizes summed local errors on 32 calibration noises; on 256 other
    noises DDIM with its times beats DDIM with uniform-logSNR and time-quadratic times."""
    den = mixture.denoiser(S)
    n = 6
    x_cal = jax.random.normal(jax.random.key(1), (32, 8))
    ts, total = dp_timesteps(den, S, n, x_cal, t_start=T0, t_end=T1, grid=48)
    assert ts.shape == (n + 1,) and np.isfinite(total)
    assert float(ts[0]) == T0 and float(ts[-1]) == pytest.approx(T1)
    assert np.all(np.diff(np.asarray(ts)) < 0)
    x = jax.random.normal(jax.random.key(2), (256, 8))
    ref = reference_solve(den, S, x, jnp.array([T0, T1]))[-1]

    def err(times):
        return float(jnp.median(per_sample_rmse(sample(den, ddim(S, times), x), ref)))

    e_dp = err(ts)
    e_uni = err(uniform_logsnr(S, n, t_start=T0, t_end=T1))
    e_quad = err(time_quadratic(S, n, t_start=T0, t_end=T1))
    assert e_dp < min(e_uni, e_quad), (e_dp, e_uni, e_quad)


def test_dp_validates_its_grid(mixture):
    den = mixture.denoiser(S)
    x = jnp.zeros((2, 8))
    with pytest.raises(ValueError, match="start at t_start"):
        dp_timesteps(den, S, 2, x, t_start=T0, t_end=T1, grid=jnp.array([0.9, 0.5, T1]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        dp_timesteps(den, S, 2, x, t_start=T0, t_end=T1, grid=jnp.array([T0, 0.5, 0.7, T1]))
