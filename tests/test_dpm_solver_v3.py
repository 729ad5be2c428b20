"""DPM-Solver-v3 (Zheng et al. 2023): empirical model statistics and the v3 solver."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import problem
from stochastic_checks import Counter, run

from samplax.schedules import VPLinear, uniform_logsnr
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.dpm_solver_v3 import EMS, compute_ems, dpm_solver_v3
from samplax.solvers.usf import Step, usf

S = VPLinear()
TS = uniform_logsnr(S, 10)
LAM = jnp.linspace(S.lam(1.0), S.lam(1e-3), 41)


@functools.cache
def _ems():
    schedule, data, _, _ = problem()
    x_cal = jax.random.normal(jax.random.key(7), (256, 4))  # disjoint from the test noise
    return compute_ems(data.denoiser(schedule), schedule, x_cal, n_grid=48)


@pytest.mark.parametrize("order, corrector", [(2, False), (3, False), (2, True), (3, True)])
def test_degenerate_statistics_are_dpm_solver_pp(order, corrector):
    """l = 1, s = b = 0: USF data form (exact Lagrange weights), with or without UniC."""
    schedule, data, x, _ = problem()
    den = data.denoiser(schedule)
    ems = EMS.degenerate(LAM, (4,))
    a = run(den, dpm_solver_v3(S, TS, ems, order, corrector, lower_order_final=False), x)
    b = run(den, usf(S, TS, Step("data", order, corrector)), x)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    if not corrector and order == 2:  # = DPM-Solver++(2M), heun variant
        c = run(den, dpm_solver_pp(S, TS, 2, solver_type="heun"), x)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_statistics_roundtrip_npz(tmp_path):
    ems = _ems()
    ems.save(tmp_path / "ems.npz")
    back = EMS.load(tmp_path / "ems.npz")
    for u, v in zip(ems, back):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert ems.l.shape == (49, 4)
    # at high noise the denoiser barely depends on x: l -> 1
    np.testing.assert_allclose(ems.l[0], 1.0, atol=1e-3)
    assert np.all(np.isfinite(np.asarray(ems.s))) and np.all(np.isfinite(np.asarray(ems.b)))


def test_empirical_statistics_beat_dpm_solver_pp_at_few_steps():
    schedule, data, x, ref = problem()
    den = data.denoiser(schedule)
    ems = _ems()
    for n in (5, 8):
        ts = uniform_logsnr(S, n)
        c = Counter(den)
        v3 = run(c, dpm_solver_v3(S, ts, ems, 2), x)
        assert c.count() == n
        pp = run(den, dpm_solver_pp(S, ts, 2), x)
        e_v3 = np.median(np.sqrt(np.mean((v3 - ref) ** 2, -1)))
        e_pp = np.median(np.sqrt(np.mean((pp - ref) ** 2, -1)))
        assert e_v3 < 0.7 * e_pp, (n, e_v3, e_pp)


def test_per_coordinate_plan_and_bad_input():
    ems = EMS.degenerate(LAM, (4,))
    p = dpm_solver_v3(S, TS, ems, 2)
    assert p.update.x.shape == (10, 4) and p.update.d.shape[2:] == (4,)
    with pytest.raises(ValueError, match="sigma = 0"):
        from samplax.schedules import EDM, karras

        dpm_solver_v3(EDM(), karras(EDM(), 5, append_zero=True), ems)
    with pytest.raises(ValueError, match="grid"):
        dpm_solver_v3(S, uniform_logsnr(S, 5, t_end=1e-4), ems)
