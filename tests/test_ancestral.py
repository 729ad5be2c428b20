"""Ancestral samplers: DDPM, DDIM(eta), Euler ancestral."""

import jax
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

from samplax.schedules import uniform_logsnr
from samplax.solvers.ancestral import ancestral_levels, ddim_eta, ddpm, euler_ancestral
from samplax.solvers.ddim import ddim
from samplax.solvers.edm import euler

N_FINE = 200


def test_eta_zero_is_ddim_and_euler_exactly():
    den, x = small_problem(S, T0)
    key = jax.random.key(0)
    base = run(den, ddim(S, TS), x)
    np.testing.assert_allclose(run(den, ddim_eta(S, TS, 0.0), x, key), base, rtol=0, atol=1e-12)
    np.testing.assert_allclose(run(den, euler_ancestral(S, TS, 0.0), x, key),
                               run(den, euler(S, TS), x), rtol=0, atol=1e-12)
    # the noise coefficients are exactly zero
    p = ddim_eta(S, TS, 0.0)
    assert float(np.abs(p.update.z).max()) == 0.0


def test_ddpm_is_ddim_eta_one_and_euler_ancestral():
    den, x = small_problem(S, T0)
    key = jax.random.key(1)
    a = run(den, ddpm(S, TS), x, key)
    np.testing.assert_allclose(run(den, ddim_eta(S, TS, 1.0), x, key), a, atol=1e-12)
    np.testing.assert_allclose(run(den, euler_ancestral(S, TS, 1.0), x, key), a, atol=1e-12)


def test_levels_match_ddim_sigma():
    """alpha_t sigma_up = DDIM's sigma_t(eta) = eta sqrt((1-a_t)/(1-a_s)) sqrt(1 - a_s/a_t)."""
    s, t = 0.6, 0.3
    st = lambda u: S.sigma(u) / S.alpha(u)
    down, up = ancestral_levels(st(s), st(t), 0.7)
    a_s, a_t = S.alpha(s) ** 2, S.alpha(t) ** 2
    ddim_sigma = 0.7 * np.sqrt((1 - a_t) / (1 - a_s)) * np.sqrt(1 - a_s / a_t)
    np.testing.assert_allclose(S.alpha(t) * up, ddim_sigma, rtol=1e-12)
    np.testing.assert_allclose(down**2 + up**2, st(t) ** 2, rtol=1e-12)


@pytest.mark.parametrize("make", [lambda ts: ddpm(S, ts), lambda ts: ddim_eta(S, ts, 0.5),
                                  lambda ts: euler_ancestral(S, ts, 1.0, s_noise=1.0)],
                         ids=["ddpm", "ddim_eta0.5", "euler_a"])
def test_gaussian_moments_and_nfe(make):
    """NFE 200 (first order: covariance bias about 0.05, tolerance 5 s.e. at n = 2000)."""
    check_gaussian(make(fine_times(N_FINE)), S, T0, T1, n=2000)


def test_two_sample_mixture():
    check_two_sample(ddpm(S, fine_times(N_FINE)), S, T0, T1)


def test_two_sample_has_power():
    # five DDPM steps are far from the data distribution: the test must reject them
    with pytest.raises(AssertionError):
        check_two_sample(ddpm(S, uniform_logsnr(S, 5)), S, T0, T1)


def test_keys_batch_and_vmap():
    check_noise_and_batching(ddim_eta(S, TS, 0.5), S, T0)


def test_last_step_to_zero_noise_is_x0():
    from samplax.schedules import EDM, karras

    e = EDM()
    ts = karras(e, 6, append_zero=True)
    den, x = small_problem(e, ts[0])
    p = euler_ancestral(e, ts, 1.0)
    out = run(den, p, x, jax.random.key(0))
    assert np.all(np.isfinite(out))
    assert float(p.final.z if p.final.z is not None else 0.0) == 0.0
    assert float(np.abs(p.update.z[-1])) == 0.0
