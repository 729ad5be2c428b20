"""Search objectives other than the per-sample RMSE: the energy distance (a
distribution distance) and any user-given metric, in the library and the CLI."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.models.builtin import builtin
from samplax.schedules import kl_optimal
from samplax.search import (
    SearchConfig,
    atomic_write_json,
    evaluate_baselines,
    load_plan,
    make_teacher,
    search,
)
from samplax.search.free_plan import tune_plan
from samplax.search.objective import energy_distance, resolve_metric
from samplax.solvers import ddim

CONFIG = SearchConfig().set(population=dict(size=8, generations=1, elites=2, refine_iters=10),
                            refine=dict(iters=20, finalists=1), polish=dict(iters=0),
                            space=dict(afs=(False,)), plan_fit=dict(iters=10))
NFE = 3


def test_energy_distance_of_point_masses_and_gaussians():
    a, b = jnp.zeros((5, 3)), jnp.ones((7, 3))
    # all mass at two points: 2 |a - b|, the within-sample terms vanish
    np.testing.assert_allclose(energy_distance(a, b), 2 * math.sqrt(3), rtol=1e-12)
    np.testing.assert_allclose(energy_distance(a, a), 0.0, atol=1e-12)
    # N(0, 1) against N(m, 1) in 1-d: 2 E|Z_2 - m| - 2 E|Z_2| with Z_2 ~ N(0, 2)
    m, n = 0.7, 3000
    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(kx, (n, 1)), m + jax.random.normal(ky, (n, 1))
    s = math.sqrt(2.0)
    e_abs = s * math.sqrt(2 / math.pi) * math.exp(-m ** 2 / (2 * s ** 2)) + m * math.erf(
        m / (s * math.sqrt(2)))
    exact = 2 * e_abs - 2 * s * math.sqrt(2 / math.pi)
    np.testing.assert_allclose(energy_distance(x, y), exact, atol=0.02)
    # a distance between the empirical distributions: >= 0, blind to the order
    assert energy_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)
    near = x + 0.01 * jax.random.normal(ky, x.shape)
    assert 0 < energy_distance(near, x) == pytest.approx(energy_distance(near, x[::-1]))
    # finite gradients although samples coincide (the self-distances are left out)
    g = jax.grad(lambda z: energy_distance(z, b))(a)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_resolve_metric_names_and_errors():
    assert resolve_metric(None)[0] == "rmse" and resolve_metric("energy")[0] == "energy"

    def mean_abs(x, ref):
        return jnp.mean(jnp.abs(x - ref))

    assert resolve_metric(mean_abs) == ("mean_abs", mean_abs)
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        resolve_metric("fid")
    with pytest.raises(TypeError, match="name or a function"):
        resolve_metric(3)


@pytest.fixture(scope="module")
def mixture():
    p = builtin("gmm2d")
    teacher = make_teacher(p.denoiser, p.schedule, p.x_T, p.t_start, p.t_end,
                           n_cal=128, n_eval=256, n_fit=64)
    return p, teacher


# slow (70 s on 2 cores); the default run keeps the metric plumbing: a user's metric
# (test_search_with_a_user_metric) and the CLI's --metric energy
@pytest.mark.slow
def test_search_minimizes_the_energy_distance(mixture, tmp_path):
    p, teacher = mixture
    kw = dict(t_start=p.t_start, t_end=p.t_end)
    base = evaluate_baselines(p.denoiser, p.schedule, NFE, teacher, **kw, metric="energy")
    assert all("metric" in v for v in base.values())
    best = base["best"]
    assert best["metric"] == min(v["metric"] for k, v in base.items() if k != "best")
    ck = tmp_path / "ck.json"
    res = search(p.denoiser, p.schedule, NFE, teacher, config=CONFIG, metric="energy",
                 checkpoint=ck, progress=False, **kw)
    met = res["objective"]["metric"]
    assert met["name"] == "energy"
    run = jax.jit(lambda q, z: sample(p.denoiser, q, z))
    atomic_write_json(tmp_path / "r.json", res)
    plan = load_plan(tmp_path / "r.json", p.schedule)
    assert plan.nfe == NFE
    np.testing.assert_allclose(met["heldout"], energy_distance(run(plan, teacher.x_eval),
                                                               teacher.ref_eval), rtol=1e-9)
    # held-out energy distance below every hand-made schedule's (chosen on held-out)
    assert met["heldout"] < best["metric"], (met, best)
    # the free-plan phase fitted the metric with Adam; the residual fits were skipped
    tuning = res["search"]["plan_tuning"]
    assert (tuning["method"], tuning["loss_name"]) == ("adam", "energy")
    assert tuning["loss"] <= tuning["loss_before"]
    assert res["search"]["output_fit"] is None and res["search"]["coordinate_fit"] is None
    # a checkpoint of another metric belongs to another search
    with pytest.raises(ValueError, match="another search"):
        search(p.denoiser, p.schedule, NFE, teacher, config=CONFIG, checkpoint=ck,
               progress=False, **kw)


def mean_abs_error(x, ref):
    """A user's metric: the mean absolute error against the teacher."""
    return jnp.mean(jnp.abs(x - ref))


def test_search_with_a_user_metric(mixture):
    p, teacher = mixture
    cfg = SearchConfig().set(population=dict(size=4, generations=1, elites=1, refine_iters=5),
                             refine=dict(iters=10, finalists=1), polish=dict(iters=0),
                             space=dict(afs=(False,)), plan_fit=dict(iters=5))
    res = search(p.denoiser, p.schedule, NFE, teacher, config=cfg, metric=mean_abs_error,
                 t_start=p.t_start, t_end=p.t_end, progress=False)
    met = res["objective"]["metric"]
    assert met["name"] == "mean_abs_error" and np.isfinite(met["heldout"])
    hand = ddim(p.schedule, kl_optimal(p.schedule, NFE, t_start=p.t_start, t_end=p.t_end))
    assert met["heldout"] < float(mean_abs_error(sample(p.denoiser, hand, teacher.x_eval),
                                                 teacher.ref_eval))


def test_tune_plan_needs_adam_for_a_metric(mixture):
    p, teacher = mixture
    plan = ddim(p.schedule, kl_optimal(p.schedule, NFE, t_start=p.t_start, t_end=p.t_end))
    args = (p.denoiser, p.schedule, plan, teacher.x_cal, teacher.ref_cal)
    with pytest.raises(ValueError, match="method='adam'"):
        tune_plan(*args, iters=2, metric=energy_distance)
    tuned, before, after, _ = tune_plan(*args, iters=20, method="adam", lr=0.003,
                                     metric=energy_distance)
    assert after <= before


def test_cli_search_with_a_metric(tmp_path, capsys):
    from samplax.cli import load_metric, main

    out = tmp_path / "r.json"
    small = ["search", "--model", "gmm2d", "--nfe", "3", "--n-cal", "32", "--n-eval", "64",
             "--population", "4", "--generations", "1", "--quiet", "--set", "refine_iters=3",
             "--set", "final_iters=5", "--set", "polish_iters=0", "--set", "plan_iters=3",
             "--set", "afs=[false]", "--set", "finalists=1", "--set", "elites=1",
             "--out", str(out)]
    assert main(small + ["--metric", "energy", "--set", "trajectory_weight=0.5"]) == 0
    text = capsys.readouterr().out
    assert "+ 0 fitting" in text  # no fitting noises: the per-coordinate fit fits RMSE
    # the intermediate-state term: the CLI kept the teacher's trajectories for it
    res = json.loads(out.read_text())
    assert res["objective"]["trajectory"]["weight"] == 0.5
    assert res["objective"]["trajectory"]["calibration"] > 0
    assert res["search"]["plan_tuning"] is None  # skipped with a trajectory objective
    assert "searched metric (energy)" in text and "| energy |" in text
    with pytest.raises(SystemExit, match="unknown metric 'fid'"):
        main(small + ["--metric", "fid"])
    with pytest.raises(SystemExit, match="no module 'no_such_module' in the current directory"):
        main(small + ["--metric", "no_such_module:f"])
    assert load_metric("tests.test_search_metric:mean_abs_error").__name__ == "mean_abs_error"
    assert load_metric(None) is None and load_metric("energy") == "energy"
    with pytest.raises(SystemExit, match="not a function"):
        load_metric("math:pi")
