"""Time-shift sampling (TS-DPM) and epsilon scaling: denoiser transforms."""

import jax
import jax.numpy as jnp
import numpy as np
from convergence import problem
from stochastic_checks import Counter, run

from samplax.schedules import DiscreteVP, VPLinear, uniform_logsnr
from samplax.solvers.dpm_solver import dpm_solver
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.eps_scaling import eps_scaling, linear_factor
from samplax.solvers.time_shift import shifted_times, time_shift

S = VPLinear()
TS = uniform_logsnr(S, 8)


def _setup():
    schedule, data, x, ref = problem()
    return data, data.denoiser(schedule), x


def test_window_zero_and_cutoff_give_the_base_exactly():
    data, den, x = _setup()
    for plan in (dpm_solver(S, TS, 2), dpm_solver_pp(S, TS, 2)):
        base = run(den, plan, x)
        np.testing.assert_allclose(run(time_shift(den, S, 0), plan, x), base, rtol=0, atol=1e-12)
        np.testing.assert_allclose(run(time_shift(den, S, 30, cutoff=2.0), plan, x), base,
                                   rtol=0, atol=1e-12)


def test_shifted_times_match_brute_force_and_stay_in_window():
    scale = jnp.array([0.5, 0.7, 0.9, 1.0, 1.1])[:, None]
    x = jax.random.normal(jax.random.key(0), (5, 64)) * scale
    t = 0.55
    ts = shifted_times(x, t, S, 30, cutoff=0.3, n_train=1000)
    var = np.var(np.asarray(x), axis=1, ddof=1)
    cand = t + np.arange(-15, 16) / 1000
    sig2 = np.asarray(S.sigma(cand)) ** 2
    expect = cand[np.argmin((var[:, None] - sig2[None]) ** 2, axis=1)]
    np.testing.assert_allclose(ts, expect, rtol=0, atol=1e-15)
    assert np.all(np.abs(np.asarray(ts) - t) <= 0.015 + 1e-12)
    np.testing.assert_allclose(shifted_times(x, 0.2, S, 30, cutoff=0.3), 0.2)  # below cutoff


def test_per_sample_times_reach_the_network_and_nfe_is_unchanged():
    data, den, x = _setup()
    seen = []

    def recording(xx, t):
        jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), t)
        return den(xx, t)

    c = Counter(time_shift(recording, S, 40, cutoff=0.0))
    plan = dpm_solver(S, TS, 2, method="multistep")
    out = run(c, plan, 1.3 * x)  # too much noise: the shift moves the times
    assert c.count() == plan.nfe
    jax.effects_barrier()
    assert all(t.shape == (x.shape[0],) for t in seen)
    assert any(np.ptp(t) > 0 for t in seen)  # different samples, different times
    assert np.all(np.isfinite(out))


def test_discrete_schedule_uses_training_steps():
    d = DiscreteVP.linear()
    x = jax.random.normal(jax.random.key(1), (4, 16))
    ts = shifted_times(x, d.t_of_label(500.0), d, 10, n_train=d.n)
    labels = np.asarray(d.label(ts))
    np.testing.assert_allclose(labels, np.round(labels), atol=1e-9)
    assert np.all(np.abs(labels - 500) <= 5)


def test_eps_scaling():
    data, den, x = _setup()
    plan = dpm_solver_pp(S, TS, 2)
    np.testing.assert_allclose(run(eps_scaling(den, S, 1.0), plan, x), run(den, plan, x),
                               rtol=0, atol=1e-13)
    # eps' = eps / b
    t = 0.4
    b = linear_factor(1.01, k=0.02)
    d2 = eps_scaling(den, S, b)(x, t)
    eps = (x - S.alpha(t) * den(x, t)) / S.sigma(t)
    eps2 = (x - S.alpha(t) * d2) / S.sigma(t)
    np.testing.assert_allclose(eps2, eps / (1.01 + 0.02 * t), rtol=1e-10)
    # per-sample times and sigma = 0 stay finite
    tt = jnp.linspace(0.0, 0.9, x.shape[0])
    assert np.all(np.isfinite(eps_scaling(den, S, b)(x, tt)))
