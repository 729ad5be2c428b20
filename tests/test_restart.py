"""Restart sampling (Xu et al. 2023)."""

import jax
import numpy as np
import pytest
from stochastic_checks import (
    Counter,
    check_gaussian,
    check_noise_and_batching,
    check_two_sample,
    run,
    small_problem,
)

from samplax.schedules import EDM, karras
from samplax.solvers.edm import heun
from samplax.solvers.noise import BrownianNoise
from samplax.solvers.restart import (
    EDM_CIFAR10,
    EDM_IMAGENET64,
    RestartInterval,
    restart,
    restart_edm,
)
from samplax.solvers.usf import Step, usf

E = EDM()
TS = karras(E, 10, append_zero=True)


def test_no_restarts_is_the_base_exactly():
    den, x = small_problem(E, TS[0])
    none = [RestartInterval(0.14, 0.30, 0, 3)]
    np.testing.assert_allclose(run(den, restart(E, TS, none), x), run(den, heun(E, TS), x),
                               rtol=0, atol=1e-12)
    ts = TS[:-1]  # a multistep exponential base, ending at sigma > 0
    np.testing.assert_allclose(run(den, restart(E, ts, none, base=Step("data", 2)), x),
                               run(den, usf(E, ts, Step("data", 2)), x), rtol=0, atol=1e-12)


def test_official_nfe():
    """Official configurations: NFE = 2 N - 1 + sum 2 K (N_restart - 1)."""
    assert restart_edm().nfe == 43 == 2 * 18 - 1 + 2 * 2 * (3 - 1)
    assert restart_edm(EDM_IMAGENET64).nfe == 203
    assert EDM_CIFAR10["intervals"][0] == RestartInterval(0.14, 0.30, 2, 3)


def test_nfe_counts_network_calls():
    ivs = [RestartInterval(0.5, 2.0, 2, 3), RestartInterval(0.05, 0.2, 1, 4)]
    p = restart(E, TS, ivs, S_noise=1.003, restart_gamma=0.05, S_min=0.01, S_max=1.0)
    assert p.nfe == 2 * 10 - 1 + 2 * 2 * 2 + 2 * 1 * 3
    den, x = small_problem(E, TS[0])
    c = Counter(den)
    run(c, p, x, jax.random.key(0))
    assert c.count() == p.nfe


def test_gaussian_moments_official_cifar10_setting():
    """The official EDM CIFAR-10 configuration (NFE 43) on Gaussian data."""
    check_gaussian(restart_edm(), E, 80.0, 0.0, n=2000)


def test_two_sample_mixture():
    ts = karras(E, 30, append_zero=True)
    p = restart(E, ts, [RestartInterval(0.06, 0.30, 4, 4), RestartInterval(0.3, 1.0, 2, 4)],
                S_noise=1.0)
    check_two_sample(p, E, ts[0], 0.0)


def test_keys_batch_and_vmap_and_no_brownian_spans():
    p = restart(E, TS, [RestartInterval(0.14, 0.30, 2, 3)], restart_gamma=0.05, S_min=0.01,
                S_max=1.0)
    check_noise_and_batching(p, E, TS[0])
    assert p.noise_span is None
    den, x = small_problem(E, TS[0])
    with pytest.raises(ValueError, match="span"):
        run(den, p, x, jax.random.key(0), noise=BrownianNoise.for_schedule(E))


def test_multistep_base_with_restarts():
    ts = TS[:-1]
    p = restart(E, ts, [RestartInterval(0.1, 0.5, 2, 4)], base=Step("data", 2))
    assert p.nfe == (len(ts) - 1) + 2 * 3
    den, x = small_problem(E, ts[0])
    assert np.all(np.isfinite(run(den, p, x, jax.random.key(0))))


def test_bad_intervals():
    with pytest.raises(ValueError):
        restart(E, TS, [RestartInterval(0.3, 0.2, 1, 3)])
    with pytest.raises(ValueError):
        restart(E, TS, [RestartInterval(0.1, 0.3, 1, 1)])
    with pytest.raises(ValueError):
        restart(E, TS, [RestartInterval(79.0, 90.0, 1, 3)])  # nearest the first time
    with pytest.raises(ValueError):
        restart(E, TS, [RestartInterval(1e-4, 0.3, 1, 3)])  # nearest the last time
