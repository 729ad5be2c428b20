"""Heavy-ball momentum and GHVB (Wizadwongsa et al. 2023)."""

import jax
import numpy as np
import pytest
from convergence import problem
from stochastic_checks import Counter, run

from samplax.schedules import EDM, VPLinear, karras, uniform_logsnr
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.momentum import GHVB_WEIGHTS, dpm_solver_pp_hb, ghvb, plms_hb
from samplax.solvers.plan import stack_plans
from samplax.solvers.pndm import AB_FIXED, ipndm

S = VPLinear()
TS = uniform_logsnr(S, 12)


def _setup():
    schedule, data, x, ref = problem()
    return data.denoiser(schedule), x, ref


@pytest.mark.parametrize("order", [1, 2, 4])
def test_beta_one_is_plms_exactly(order):
    den, x, _ = _setup()
    base = run(den, ipndm(S, TS, order), x)
    for method in (plms_hb, ghvb):
        np.testing.assert_allclose(run(den, method(S, TS, order, 1.0), x), base, rtol=0,
                                   atol=1e-12)


def test_beta_one_is_dpm_solver_pp_2m_exactly():
    den, x, _ = _setup()
    for n in (6, 12):  # with and without lower_order_final
        ts = uniform_logsnr(S, n)
        np.testing.assert_allclose(run(den, dpm_solver_pp_hb(S, ts, 1.0), x),
                                   run(den, dpm_solver_pp(S, ts, 2), x), rtol=0, atol=1e-12)


def test_ghvb_weights():
    for k in range(1, 5):
        np.testing.assert_allclose(GHVB_WEIGHTS(k, 1.0), AB_FIXED[k], rtol=1e-15)
        for beta in (0.3, 0.8):
            np.testing.assert_allclose(sum(GHVB_WEIGHTS(k, beta)), 1.0, rtol=1e-14)  # consistent
    # order 2: [(2 + beta) v_n - (2 - beta) v_{n-1}] / (2 beta)
    np.testing.assert_allclose(GHVB_WEIGHTS(2, 0.5), [2.5, -1.5])


@pytest.mark.parametrize("method", [plms_hb, ghvb, lambda s, t, o, b: dpm_solver_pp_hb(s, t, b)],
                         ids=["plms_hb", "ghvb", "dpm_solver_pp_hb"])
def test_converges_and_counts_nfe(method):
    den, x, ref = _setup()
    errs = []
    for n in (20, 40, 80):
        p = method(S, uniform_logsnr(S, n), 2, 0.8)
        c = Counter(den)
        out = run(c, p, x)
        assert c.count() == p.nfe == n
        errs.append(float(np.median(np.abs(out - ref))))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.6 * errs[0], errs


def test_vmap_over_betas_and_sigma_zero_end():
    den, x, _ = _setup()
    plans = [ghvb(S, TS, 3, b) for b in (0.5, 0.8, 1.0)]
    out = jax.vmap(lambda p: run(den, p, x))(stack_plans(plans))
    for i, p in enumerate(plans):
        np.testing.assert_allclose(out[i], run(den, p, x), rtol=0, atol=1e-12)
    e = EDM()
    ts = karras(e, 6, append_zero=True)
    e_den = problem()[1].denoiser(e)
    for p in (plms_hb(e, ts, 4, 0.7), ghvb(e, ts, 4, 0.7), dpm_solver_pp_hb(e, ts, 0.7)):
        assert np.all(np.isfinite(run(e_den, p, 80.0 * x)))


def test_bad_beta():
    for beta in (0.0, 1.5):
        with pytest.raises(ValueError):
            ghvb(S, TS, 2, beta)
    with pytest.raises(ValueError):
        plms_hb(S, TS, 5, 0.5)
