"""DC-Solver's dynamic compensation on UniPC (Zhao et al. 2024)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import problem
from stochastic_checks import run

from samplax.models import reference_solve
from samplax.schedules import VPLinear, uniform_logsnr, uniform_time
from samplax.solvers.dc_solver import compensation_weights, dc_unipc, fit_dc_ratios
from samplax.solvers.unipc import unipc

S = VPLinear()
TS = uniform_logsnr(S, 8)


@pytest.mark.parametrize("order, variant", [(2, "bh1"), (3, "bh2")])
def test_unit_ratios_are_unipc_exactly(order, variant):
    schedule, data, x, _ = problem()
    den = data.denoiser(schedule)
    np.testing.assert_allclose(run(den, dc_unipc(S, TS, None, order, variant), x),
                               run(den, unipc(S, TS, order, variant), x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(run(den, dc_unipc(S, TS, jnp.ones(8), order, variant), x),
                               run(den, unipc(S, TS, order, variant), x), rtol=0, atol=1e-12)


def test_compensation_weights():
    ts = [0.5, 0.6, 0.75]
    assert compensation_weights(ts, 1.0) == [1.0, 0.0, 0.0]
    # exact for quadratics in t
    w = compensation_weights(ts, 0.7)
    tp = 0.7 * 0.5 + 0.3 * 0.6
    f = lambda u: 1.0 - 2.0 * u + 3.0 * u**2
    np.testing.assert_allclose(sum(wj * f(tj) for wj, tj in zip(w, ts)), f(tp), rtol=1e-14)


def test_fitted_ratios_reduce_the_error():
    """Fitted step by step on 16 calibration samples, evaluated on 256 others (NFE 8)."""
    schedule, data, _, _ = problem()
    den = data.denoiser(schedule)
    ts = uniform_time(S, 8)
    xc = jax.random.normal(jax.random.key(10), (16, 4))
    xe = jax.random.normal(jax.random.key(11), (256, 4))
    rho, losses = fit_dc_ratios(den, S, ts, xc, reference_solve(den, S, xc, ts), order=2)
    assert rho.shape == (8,) and losses.shape == (8, 2)
    np.testing.assert_allclose(rho[:2], 1.0)  # too few outputs: not compensated
    assert np.all(losses[2:, 1] <= losses[2:, 0])  # each step's fit improves its loss
    ref = reference_solve(den, S, xe, ts)[-1]
    err = lambda r: np.median(np.sqrt(np.mean((run(den, dc_unipc(S, ts, r, 2), xe) - ref) ** 2,
                                              -1)))
    assert err(rho) < 0.8 * err(None), (err(rho), err(None))
