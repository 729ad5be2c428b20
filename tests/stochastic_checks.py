"""Shared checks for the stochastic and plug-in samplers (imported by their test files).

* :func:`check_gaussian`: on Gaussian data the samples' mean and covariance match the
  exact marginal at the final time within 5 standard errors: per coordinate
  ``5 sqrt(C_ii/n)`` for the mean and ``5 sqrt((C_ii C_jj + C_ij^2)/n)`` for each
  covariance entry (the standard errors of Gaussian sample moments); the NFE of
  each sampler is chosen so that its discretization bias is well below that.
* :func:`check_two_sample`: a kernel MMD permutation test (500 relabelings) against
  exact samples of a Gaussian mixture at the final time; passes at level 0.005
  (the smallest attainable p-value is 1/501).
* :class:`Counter`: counts denoiser calls at run time (``jax.debug.callback``).
* :func:`check_noise_and_batching`: same key same samples, another key other
  samples, a sample's noise independent of the batch size, ``vmap`` over keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import mmd_test
from samplax.models import GaussianMixture, gaussian
from samplax.schedules import VPLinear, uniform_logsnr
from samplax.solvers.executor import sample

# the VP setting most sampler tests share: 12 logSNR steps from t = 1 to 1e-3
S = VPLinear()
T0, T1 = 1.0, 1e-3
TS = uniform_logsnr(S, 12)


@functools.cache
def fine_times(n: int):
    """``n`` logSNR-uniform steps on ``S`` (distribution tests run at high NFE)."""
    return uniform_logsnr(S, n)

GAUSS_MU = jnp.array([1.0, -0.5, 0.3])
GAUSS_COV = jnp.array([[1.0, 0.6, 0.2], [0.6, 0.8, -0.3], [0.2, -0.3, 0.5]])
GAUSS = gaussian(GAUSS_MU, GAUSS_COV)
# a well-separated 3-component mixture in 2-d (as tests/convergence.py's, smaller)
GMM = GaussianMixture.diagonal(
    jnp.array([0.3, 0.3, 0.4]),
    jnp.array([[1.5, -1.0], [-1.0, 1.0], [0.0, -1.5]]),
    jnp.array([0.25, 0.16, 0.36]),
)

run = jax.jit(sample, static_argnums=0, static_argnames=("noise",))


class Counter:
    """Wrap a denoiser so that every network call made at run time is counted."""

    def __init__(self, den):
        self.den = den
        self.calls = 0

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
        return self.den(x, t)

    def count(self) -> int:
        jax.effects_barrier()
        return self.calls


def check_gaussian(plan, schedule, t_start, t_end, *, n=4000, seed=0, noise=None) -> dict:
    """Mean/covariance of ``n`` samples against the exact marginal at ``t_end`` (module doc).

    Also checks that the run made exactly ``plan.nfe`` network calls. Returns the
    errors and tolerances.
    """
    den = Counter(GAUSS.denoiser(schedule))
    x_T = GAUSS.prior_sample(jax.random.key(seed), n, schedule, t_start)
    x = run(den, plan, x_T, jax.random.key(seed + 1), noise=noise)
    assert den.count() == plan.nfe, (den.count(), plan.nfe)
    a, s = schedule.alpha(t_end), schedule.sigma(t_end)
    m = a * GAUSS_MU
    C = a**2 * GAUSS_COV + s**2 * jnp.eye(3)
    d = np.sqrt(np.diag(C))
    tol_m = 5.0 * d / np.sqrt(n)
    tol_c = 5.0 * np.sqrt((np.outer(d**2, d**2) + np.asarray(C) ** 2) / n)
    err_m = np.abs(np.mean(np.asarray(x), 0) - np.asarray(m))
    err_c = np.abs(np.cov(np.asarray(x).T) - np.asarray(C))
    assert np.all(np.isfinite(x))
    assert np.all(err_m <= tol_m), (err_m, tol_m)
    assert np.all(err_c <= tol_c), (err_c, tol_c)
    return dict(err_mean=err_m, tol_mean=tol_m, err_cov=err_c, tol_cov=tol_c)


def check_two_sample(plan, schedule, t_start, t_end, *, n=800, seed=0, level=5e-3) -> float:
    """MMD permutation test of ``n`` samples against ``n`` exact mixture samples at ``t_end``."""
    den = GMM.denoiser(schedule)
    x_T = GMM.prior_sample(jax.random.key(seed), n, schedule, t_start)
    x = run(den, plan, x_T, jax.random.key(seed + 1))
    ref = GMM.prior_sample(jax.random.key(seed + 2), n, schedule, t_end)
    p = mmd_test(x, ref, key=jax.random.key(seed + 3), n_perm=500)["p_value"]
    assert p > level, p
    return p


def check_noise_and_batching(plan, schedule, t_start, *, seed=0):
    """Keys, per-row noise independent of the batch size, and ``vmap`` over keys."""
    den = GMM.denoiser(schedule)
    x = GMM.prior_sample(jax.random.key(seed), 6, schedule, t_start)
    k1, k2 = jax.random.key(seed + 1), jax.random.key(seed + 2)
    a = run(den, plan, x, k1)
    np.testing.assert_array_equal(run(den, plan, x, k1), a)
    if plan.stochastic:
        assert not np.allclose(run(den, plan, x, k2), a)
    both = jax.vmap(lambda k: run(den, plan, x[:3], k))(jnp.stack([k1, k2]))
    np.testing.assert_allclose(both[0], a[:3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(both[1], run(den, plan, x, k2)[:3], rtol=0, atol=1e-12)
    return a


def small_problem(schedule, t_start, n=6, seed=0):
    """The mixture's denoiser and ``n`` exact initial states (for reduction tests)."""
    return GMM.denoiser(schedule), GMM.prior_sample(jax.random.key(seed), n, schedule, t_start)
