"""benchmarks/oracles.py: the recorded run is the executor's run, and each oracle is
never worse, sample by sample, than the plan it starts from."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.metrics import per_sample_rmse
from samplax.models import gaussian
from samplax.schedules import VPLinear, uniform_logsnr
from samplax.search import make_teacher
from samplax.search.basis import with_basis
from samplax.solvers import dpm_solver_pp

S = VPLinear()
T0, T1 = 1.0, 1e-3


def _load_oracles():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "oracles.py"
    spec = importlib.util.spec_from_file_location("oracles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oracles = _load_oracles()


@pytest.fixture(scope="module")
def problem():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    cov = q @ np.diag(np.linspace(0.05, 1.0, 6) ** 2) @ q.T
    den = gaussian(jnp.linspace(-0.5, 0.5, 6), jnp.asarray(cov)).denoiser(S)
    teacher = make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, 6)), T0, T1,
                           n_cal=4, n_eval=16)
    plan = dpm_solver_pp(S, uniform_logsnr(S, 4, t_start=T0, t_end=T1), order=2)
    return den, teacher, plan, q


@pytest.mark.parametrize("in_basis", [False, True])
def test_recorded_run_is_the_executors_run(problem, in_basis):
    den, teacher, plan, q = problem
    if in_basis:
        plan = with_basis(plan, q)
    x = teacher.x_eval
    y, outs, anchors, z0 = oracles.run_recorded(den, plan, x)
    B = np.eye(6) if plan.basis is None else np.asarray(plan.basis)
    np.testing.assert_allclose(y @ B.T, sample(den, plan, x), atol=1e-12)
    np.testing.assert_allclose(z0 @ B.T, x, atol=1e-12)
    assert outs.shape == anchors.shape == (plan.nfe,) + x.shape
    # the first slot of a DPM-Solver++ plan evaluates the network at x_T itself
    np.testing.assert_allclose(outs[0] @ B.T, den(x, plan.t[0]), atol=1e-12)


def test_oracles_are_never_worse_than_the_plan(problem):
    den, teacher, plan, _ = problem
    x, ref = teacher.x_eval, teacher.ref_eval
    y, outs, anchors, z0 = oracles.run_recorded(den, plan, x)
    own = per_sample_rmse(y, ref)
    comb, removed, m = oracles.final_combination_oracle(y, outs, z0, ref)
    # 7 vectors span these 6-d samples: the fit is exact, the share 1 up to round-off
    assert m == plan.nfe + 3 and 0.0 <= removed <= 1.0 + 1e-12
    assert np.all(np.asarray(comb) <= np.asarray(own) * (1 + 1e-9))
    times, dl = oracles.network_time_oracle(den, S, plan, x, ref, steps=20)
    assert dl.shape == (x.shape[0], plan.nfe)
    assert np.all(np.asarray(times) <= np.asarray(own) * (1 + 1e-9))
    assert np.median(np.asarray(times)) < np.median(np.asarray(own))
    r2 = oracles.predictability(dl, outs, anchors, z0)
    assert r2.shape == (plan.nfe,) and np.all((r2 >= -1e-12) & (r2 <= 1 + 1e-12))
