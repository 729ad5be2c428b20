"""ER-SDE-Solver (Cui et al. 2023)."""

import jax
import numpy as np
import pytest
from convergence import problem
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

from samplax.schedules import uniform_logsnr
from samplax.solvers.ddim import ddim
from samplax.solvers.er_sde import _coefficients, default_noise_scaler, er_sde

N_FINE = 50


def test_ode_noise_scaler_first_order_is_ddim_exactly():
    den, x = small_problem(S, T0)
    p = er_sde(S, TS, 1, noise_scaler=lambda u: u)
    assert float(np.abs(p.update.z).max()) == 0.0
    np.testing.assert_allclose(run(den, p, x, jax.random.key(0)), run(den, ddim(S, TS), x),
                               rtol=0, atol=1e-12)


def test_ode_noise_scaler_higher_orders_converge():
    """With f(x) = x the stages are multistep ODE solvers: more stages, smaller error."""
    schedule, data, x, ref = problem()
    den = data.denoiser(schedule)
    ts = uniform_logsnr(schedule, 16)
    err = [np.median(np.abs(run(den, er_sde(schedule, ts, k, lambda u: u), x,
                                jax.random.key(0)) - ref)) for k in (1, 2, 3)]
    assert err[1] < 0.5 * err[0] and err[2] < err[1], err


def test_stage_integrals_against_fine_quadrature():
    a, b = 0.3, 2.5
    c = _coefficients(b, a, default_noise_scaler, 32)
    u = np.linspace(a, b, 400001)
    f = np.asarray(default_noise_scaler(u))
    s1 = np.trapezoid(1.0 / f, u)
    s2 = np.trapezoid((u - b) / f, u)
    np.testing.assert_allclose(c["c2"], (a - b) + s1 * float(default_noise_scaler(a)), rtol=1e-8)
    np.testing.assert_allclose(c["c3"], 0.5 * (a - b) ** 2 + s2 * float(default_noise_scaler(a)),
                               rtol=1e-7)


def test_gaussian_moments_and_nfe():
    """ER-SDE-Solver-3, NFE 50."""
    check_gaussian(er_sde(S, fine_times(N_FINE)), S, T0, T1, n=2000)


def test_two_sample_mixture():
    check_two_sample(er_sde(S, fine_times(N_FINE)), S, T0, T1)


def test_keys_batch_and_vmap():
    check_noise_and_batching(er_sde(S, TS, 2), S, T0)


def test_bad_options():
    with pytest.raises(ValueError):
        er_sde(S, TS, order=4)
