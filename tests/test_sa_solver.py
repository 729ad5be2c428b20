"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stochastic_checks import (
    T0,
    T1,
    TS,
    S,
    check_gaussian,
    check_noise_and_batching,
    check_two_sample,
    fine_times,
    run,
    small_problem,
)

from samplax.solvers.sa_solver import default_tau, sa_solver, tau_interval
from samplax.solvers.usf import Step, usf

N_FINE = 50


@pytest.mark.parametrize("p", [1, 2, 3])
def test_tau_zero_is_the_adams_predictor_corrector_exactly(p):
    """tau = 0 and c = p + 1: USF's data-form multistep with the UniC-style corrector."""
    den, x = small_problem(S, T0)
    a = run(den, sa_solver(S, TS, p, p + 1, tau=0.0, lower_order_final=False), x,
            jax.random.key(0))
    b = run(den, usf(S, TS, Step("data", p, corrector=True)), x)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_tau_functions():
    tau = default_tau(S)
    np.testing.assert_allclose(tau(jnp.array([0.1, 0.2, 0.5, 0.8, 0.9])), [0, 1, 1, 1, 0])
    np.testing.assert_allclose(tau_interval(0.3, 0.4, 0.5)(jnp.array([0.35, 0.5])), [0.5, 0])


@pytest.mark.parametrize("mode, orders, nfe", [("PEC", (3, 4), 50), ("PECE", (2, 2), 99)])
def test_gaussian_moments_and_nfe(mode, orders, nfe):
    """50 steps with tau = 1 throughout (the default tau is 0 near both ends)."""
    p = sa_solver(S, fine_times(N_FINE), *orders, tau=1.0, mode=mode)
    assert p.nfe == nfe
    check_gaussian(p, S, T0, T1, n=2000)


def test_two_sample_mixture():
    check_two_sample(sa_solver(S, fine_times(N_FINE)), S, T0, T1)


def test_keys_batch_and_vmap():
    check_noise_and_batching(sa_solver(S, TS, 2, 3, tau=1.0), S, T0)


def test_bad_options():
    for kw in (dict(predictor_order=5), dict(corrector_order=0), dict(mode="PECECE")):
        with pytest.raises(ValueError):
            sa_solver(S, TS, **kw)
