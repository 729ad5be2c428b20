"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stochastic_checks import (
    check_gaussian,
    check_noise_and_batching,
    check_two_sample,
    run,
    small_problem,
)

from samplax.schedules import EDM, VPLinear, karras, uniform_logsnr
from samplax.solvers.edm import euler, heun
from samplax.solvers.edm_sde import churn_gamma, edm_stochastic

E = EDM()
TS = karras(E, 10, append_zero=True)


@functools.cache
def _high():
    return karras(E, 100, append_zero=True)


@pytest.mark.parametrize("solver, base", [("heun", heun), ("euler", euler)])
def test_no_churn_is_the_deterministic_base_exactly(solver, base):
    den, x = small_problem(E, TS[0])
    p = edm_stochastic(E, TS, S_churn=0.0, solver=solver)
    np.testing.assert_allclose(run(den, p, x, jax.random.key(0)), run(den, base(E, TS), x),
                               rtol=0, atol=1e-12)
    assert float(jnp.abs(p.evaluate.z).max()) == 0.0
    assert p.nfe == base(E, TS).nfe


def test_gamma_rule():
    st = jnp.array([100.0, 40.0, 1.0, 0.005])
    g = churn_gamma(st, 20, 40.0, 0.01, 50.0)
    np.testing.assert_allclose(g, [0.0, np.sqrt(2) - 1, np.sqrt(2) - 1, 0.0])
    np.testing.assert_allclose(churn_gamma(st, 100, 10.0, 0.0, np.inf), 0.1)


def test_gaussian_moments_and_nfe():
    """100 steps (NFE 199), S_churn = 20 on [0.01, 50]."""
    p = edm_stochastic(E, _high(), 20.0, 0.01, 50.0, 1.0)
    assert p.nfe == 199
    check_gaussian(p, E, _high()[0], 0.0, n=2000)


def test_two_sample_mixture():
    check_two_sample(edm_stochastic(E, _high(), 20.0, 0.01, 50.0, 1.0), E, _high()[0], 0.0)


def test_keys_batch_and_vmap():
    check_noise_and_batching(edm_stochastic(E, TS, 40.0, 0.01, 50.0, 1.007), E, TS[0])


def test_any_schedule_and_euler_variant():
    s = VPLinear()
    ts = uniform_logsnr(s, 8)
    den, x = small_problem(s, 1.0)
    for solver in ("heun", "euler"):
        p = edm_stochastic(s, ts, 30.0, 0.01, 50.0, solver=solver)
        assert p.nfe == (15 if solver == "heun" else 8)
        assert np.all(np.isfinite(run(den, p, x, jax.random.key(0))))


def test_bad_options():
    with pytest.raises(ValueError):
        edm_stochastic(E, TS, solver="rk4")
    with pytest.raises(ValueError):
        edm_stochastic(E, TS, S_churn=-1.0)
