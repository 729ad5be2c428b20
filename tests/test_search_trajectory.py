"""The objective on intermediate states: teacher trajectories, their interpolation,
the slot-to-time alignment of USF plans it relies on, and the search using it."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.models import gaussian
from samplax.models.reference import reference_solve
from samplax.schedules import VPLinear, kl_optimal
from samplax.search import SearchConfig, make_teacher, search
from samplax.search.objective import teacher_states
from samplax.search.population import Evaluator, Params, trajectory_error
from samplax.search.space import times_from_theta
from samplax.solvers.usf import Choices, Step, usf

S = VPLinear()
T0, T1 = 1.0, 1e-3


@pytest.fixture(scope="module")
def problem():
    data = gaussian(jnp.array([0.5, -0.3, 0.0, 1.0]), jnp.array([0.3, 1.0, 0.05, 0.6]) ** 2)
    den = data.denoiser(S)
    teacher = make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, 4)), T0, T1,
                           n_cal=16, n_eval=32, n_grid=33)
    return den, teacher


def exact(den, teacher, t):
    return reference_solve(den, S, teacher.x_cal, jnp.array([T0, t]))[-1]


def test_teacher_states_interpolate_the_reference(problem):
    den, teacher = problem
    assert teacher.traj_cal.shape == (33, 16, 4) == teacher.dtraj_cal.shape
    # exact at the grid's points, O(h^4) between them (measured <= 4e-5 here)
    t_grid = S.t_of_lam(teacher.traj_lam[7])
    np.testing.assert_allclose(teacher_states(teacher, S, t_grid), exact(den, teacher, t_grid),
                               atol=1e-9)
    times = jnp.array([T0, 0.9, 0.5, 0.1, 0.01, 0.002])
    ref = reference_solve(den, S, teacher.x_cal, times)  # one solve for all of them
    for t, r in zip(times[1:], ref[1:]):
        np.testing.assert_allclose(teacher_states(teacher, S, t), r, atol=1e-4)
    np.testing.assert_allclose(teacher_states(teacher, S, T0), teacher.x_cal, atol=1e-9)
    g = jax.grad(lambda t: jnp.sum(teacher_states(teacher, S, t)))(0.3)
    assert np.isfinite(g) and g != 0
    with pytest.raises(ValueError, match="no trajectories"):
        teacher_states(teacher._replace(traj_lam=None), S, 0.5)
    with pytest.raises(ValueError, match="n_grid"):
        make_teacher(den, S, lambda k, n: jnp.zeros((n, 4)), T0, T1, n_cal=2, n_eval=2,
                     n_grid=1)


@pytest.mark.parametrize("afs", [False, True])
def test_usf_anchor_after_slot_k_is_the_state_at_ts_k_plus_afs(problem, afs):
    """The alignment trajectory_error uses: with 40 third-order steps the anchors match
    the reference at ts[k + afs] (the error left is the early steps'), and are far
    from it one step off."""
    den, teacher = problem
    ts = kl_optimal(S, 40, t_start=T0, t_end=T1)
    plan = usf(S, ts, [Step("data", 3, True)] * 40, afs=afs)
    out, traj = sample(den, plan, teacher.x_cal, return_trajectory=True)
    np.testing.assert_array_equal(traj[-1], out)
    ref = reference_solve(den, S, teacher.x_cal, ts)  # the states at every ts
    for k in (5, 20, 30):
        err = [float(jnp.max(jnp.abs(traj[k] - ref[k + int(afs) + s]))) for s in (-1, 0, 1)]
        # measured: 3e-2 / 1.3e-2 / 6e-2 at k = 5 with afs (the analytic first
        # step's own error), 4e-2 / 6e-4 / 4e-2 without
        assert err[1] < 0.5 * min(err[0], err[2]), (k, err)


def test_evaluator_adds_the_weighted_trajectory_error(problem):
    den, teacher = problem
    n, afs = 4, True
    plain = Evaluator(den, S, n, afs, T0, T1, teacher.x_cal, teacher.ref_cal)
    both = Evaluator(den, S, n, afs, T0, T1, teacher.x_cal, teacher.ref_cal,
                     trajectory=(teacher, 0.5))
    params = Params.zeros(n, afs)
    choices = Choices.from_steps([Step("data", 2, False)] * n)
    pl = plain.plan(params, choices)
    _, traj = sample(den, pl, teacher.x_cal, return_trajectory=True)
    ts = times_from_theta(S, params.theta, T0, T1)
    err = trajectory_error(teacher, S, traj, ts, afs)
    assert float(err) > 0
    np.testing.assert_allclose(both.loss(params, choices),
                               plain.loss(params, choices) + 0.5 * err, rtol=1e-12)


# slow (three searches, 100 s on 2 cores); the default run keeps the weighted objective
# (test_evaluator_adds_the_weighted_trajectory_error) and a weighted CLI search
# (test_search_metric.py::test_cli_search_with_a_metric)
@pytest.mark.slow
def test_search_with_a_trajectory_weight(problem):
    den, teacher = problem
    cfg = SearchConfig().set(population=dict(size=6, generations=1, elites=2, refine_iters=10),
                             refine=dict(iters=20, finalists=1), polish=dict(iters=0),
                             space=dict(afs=(False,)), plan_fit=dict(iters=0),
                             output_fit=dict(enabled=False), coordinate_fit=dict(iters=0))
    kw = dict(t_start=T0, t_end=T1, progress=False)
    runs = {w: search(den, S, 3, teacher, config=replace(cfg, trajectory_weight=w), **kw)
            for w in (0.0, 4.0)}
    rec = {w: r["objective"]["trajectory"] for w, r in runs.items()}
    assert rec[4.0]["weight"] == 4.0 and rec[0.0]["weight"] == 0.0
    # weighting the intermediate states lowers their error on the calibration noises
    assert rec[4.0]["calibration"] < rec[0.0]["calibration"], rec
    # the last phases fit the final sample only: with a trajectory weight they are
    # skipped, so the recorded error is the structured search's
    both = search(den, S, 3, teacher, config=cfg.set(trajectory_weight=4.0,
                                                      plan_fit=dict(iters=5),
                                                      output_fit=dict(enabled=True)), **kw)
    assert both["search"]["plan_tuning"] is None and both["search"]["output_fit"] is None
    assert both["tuned_plan"] is None
    assert both["objective"]["trajectory"] == rec[4.0]
    with pytest.raises(ValueError, match="n_grid"):
        search(den, S, 3, teacher._replace(traj_cal=None),
               config=replace(cfg, trajectory_weight=1.0), **kw)
    with pytest.raises(ValueError, match="trajectory_weight must be >= 0"):
        SearchConfig().set(trajectory_weight=-1.0)
