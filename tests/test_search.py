"""Search: exact budgets, quality on problems with known answers, resume, result files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.metrics import error_summary
from samplax.models import gaussian
from samplax.schedules import VPLinear, kl_optimal
from samplax.search import (
    ResultError,
    SearchConfig,
    atomic_write_json,
    load_plan,
    load_result,
    make_teacher,
    search,
)
from samplax.search import run as run_module
from samplax.solvers import ddim, dpm_solver_pp

S = VPLinear()
T0, T1 = 1.0, 1e-3
NFE = 3
CONFIG = SearchConfig(population=12, generations=2, elites=2, refine_iters=15,
                      final_iters=60, finalists=1, afs=(True,))


@pytest.fixture(scope="module")
def problem():
    data = gaussian(jnp.array([0.5, -0.3, 0.0, 1.0]), jnp.array([0.3, 1.0, 0.05, 0.6]) ** 2)
    den = data.denoiser(S)

    def x_T(key, n):
        return jax.random.normal(key, (n, 4))

    teacher = make_teacher(den, S, x_T, T0, T1, n_cal=32, n_eval=64)
    return data, den, teacher


@pytest.fixture(scope="module")
def result(problem, tmp_path_factory):
    data, den, teacher = problem
    ck = tmp_path_factory.mktemp("search") / "ck.json"
    return search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
                  progress=False, model_name="gauss4")


def test_result_has_exact_budget_and_reloads(result, tmp_path):
    assert result["nfe"] == NFE
    path = tmp_path / "r.json"
    atomic_write_json(path, result)
    plan = load_plan(path, S)
    assert plan.nfe == NFE
    assert result["search"]["candidates_per_second"] > 0


def test_searched_beats_kl_optimal_on_gaussian_data(problem, result, tmp_path):
    """For Gaussian data N(mu, diag) the KL-optimal schedule is the closed-form
    baseline; the searched plan of the same NFE must be at least as good."""
    data, den, teacher = problem
    path = tmp_path / "r.json"
    atomic_write_json(path, result)
    run = jax.jit(lambda p, x: sample(den, p, x))
    searched = error_summary(run(load_plan(path, S), teacher.x_eval), teacher.ref_eval)
    for make in (ddim, lambda s, t: dpm_solver_pp(s, t, order=2)):
        kl = make(S, kl_optimal(S, NFE, t_start=T0, t_end=T1))
        base = error_summary(run(kl, teacher.x_eval), teacher.ref_eval)
        assert searched["median_rmse"] <= base["median_rmse"], (searched, base)


def test_resume_after_interrupt_gives_the_same_result(problem, result, tmp_path, monkeypatch):
    data, den, teacher = problem
    ck = tmp_path / "ck.json"
    calls = {"n": 0}
    original = run_module.Evaluator.refine

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # during the second generation, after the first was saved
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(run_module.Evaluator, "refine", flaky)
    with pytest.raises(KeyboardInterrupt):
        search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
               progress=False, model_name="gauss4")
    saved = json.loads(ck.read_text())
    assert saved["structures"]["afs=1"]["generation"] == 1
    monkeypatch.setattr(run_module.Evaluator, "refine", original)
    resumed = search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
                     progress=False, model_name="gauss4")
    np.testing.assert_allclose(resumed["timesteps"], result["timesteps"], rtol=0, atol=1e-12)
    assert resumed["steps"] == result["steps"]
    assert resumed["objective"] == result["objective"]
    with pytest.raises(ValueError, match="another search"):
        search(den, S, NFE + 1, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
               progress=False, model_name="gauss4")


def test_bad_result_files_are_rejected(result, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultError, match="not a JSON"):
        load_result(bad)
    bad.write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ResultError, match="not a samplax search result"):
        load_result(bad)
    broken = dict(result, nfe=result["nfe"] + 1)
    bad.write_text(json.dumps(broken))
    with pytest.raises(ResultError, match="add up"):
        load_result(bad)
    broken = dict(result, timesteps=result["timesteps"][:-1])
    bad.write_text(json.dumps(broken))
    with pytest.raises(ResultError, match="timesteps"):
        load_result(bad)
    good = tmp_path / "good.json"
    atomic_write_json(good, result)
    from samplax.schedules import EDM

    with pytest.raises(ResultError, match="VPLinear"):
        load_plan(good, EDM())
