"""SDE-DPM-Solver++ 2M / 3M with eta."""

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

from samplax.schedules import EDM, karras
from samplax.solvers.ancestral import ddpm
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.sde_dpm_solver import sde_dpm_solver_pp

N_FINE = 100


@pytest.mark.parametrize("order, solver_type, third", [
    (2, "midpoint", "exact"), (2, "heun", "exact"), (3, "midpoint", "exact"),
    (3, "midpoint", "published")])
def test_eta_zero_is_dpm_solver_pp_exactly(order, solver_type, third):
    den, x = small_problem(S, T0)
    a = run(den, sde_dpm_solver_pp(S, TS, order, solver_type, eta=0.0, third_order=third), x,
            jax.random.key(0))
    b = run(den, dpm_solver_pp(S, TS, order, solver_type=solver_type, third_order=third), x)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_first_order_eta_one_is_ddpm():
    den, x = small_problem(S, T0)
    key = jax.random.key(3)
    np.testing.assert_allclose(run(den, sde_dpm_solver_pp(S, TS, 1, eta=1.0), x, key),
                               run(den, ddpm(S, TS), x, key), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order, solver_type", [(2, "midpoint"), (3, "midpoint")])
def test_gaussian_moments_and_nfe(order, solver_type):
    """NFE 100."""
    check_gaussian(sde_dpm_solver_pp(S, fine_times(N_FINE), order, solver_type), S, T0, T1, n=2000)


def test_two_sample_mixture():
    check_two_sample(sde_dpm_solver_pp(S, fine_times(N_FINE), 2), S, T0, T1)


def test_keys_batch_and_vmap():
    check_noise_and_batching(sde_dpm_solver_pp(S, TS, 3, eta=0.7), S, T0)


def test_final_step_to_zero_noise():
    e = EDM()
    ts = karras(e, 8, append_zero=True)
    den, x = small_problem(e, ts[0])
    p = sde_dpm_solver_pp(e, ts, 3)
    assert float(np.abs(p.update.z[-1])) == 0.0
    assert np.all(np.isfinite(run(den, p, x, jax.random.key(0))))


def test_bad_options():
    for kw in (dict(order=4), dict(solver_type="rk"), dict(eta=-1.0), dict(third_order="x")):
        with pytest.raises(ValueError):
            sde_dpm_solver_pp(S, TS, **kw)
