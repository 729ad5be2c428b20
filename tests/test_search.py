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
    OutputFit,
    PlanFit,
    ResultError,
    SearchConfig,
    atomic_write_json,
    continue_search,
    load_plan,
    load_result,
    make_teacher,
    resize_result,
    search,
)
from samplax.search.dp import dp_timesteps
from samplax.search.free_plan import tune_plan
from samplax.search.population import Evaluator, Params, evaluator_for, stack
from samplax.search.space import theta_from_times
from samplax.solvers import ddim, ddpm, dpm_solver_pp
from samplax.solvers.usf import Choices, Step

S = VPLinear()
T0, T1 = 1.0, 1e-3
NFE = 3
CONFIG = SearchConfig().set(population=dict(size=12, generations=2, elites=2, refine_iters=15),
                            refine=dict(iters=40, finalists=2), polish=dict(iters=20),
                            space=dict(afs=(True,)), plan_fit=dict(iters=30))


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
    original = Evaluator.refine

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # during the second generation, after the first was saved
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(Evaluator, "refine", flaky)
    with pytest.raises(KeyboardInterrupt):
        search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
               progress=False, model_name="gauss4")
    saved = json.loads(ck.read_text())
    assert saved["structures"]["afs=1"]["generation"] == 1
    monkeypatch.setattr(Evaluator, "refine", original)
    resumed = search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
                     progress=False, model_name="gauss4")
    np.testing.assert_allclose(resumed["timesteps"], result["timesteps"], rtol=0, atol=1e-12)
    assert resumed["steps"] == result["steps"]
    assert resumed["objective"] == result["objective"]
    with pytest.raises(ValueError, match="another search"):
        search(den, S, NFE + 1, teacher, t_start=T0, t_end=T1, config=CONFIG, checkpoint=ck,
               progress=False, model_name="gauss4")


def test_refine_with_a_decaying_learning_rate_never_gets_worse(problem):
    """``Evaluator.refine(lr_end=...)`` (the search's polish phase) drives one compiled
    step with a new learning rate each iteration; like the constant-rate refinement it
    returns the best iterate, never worse than the start."""
    data, den, teacher = problem
    ev = evaluator_for(den, S, NFE + 1, True, T0, T1, teacher)
    steps = [Step("data", 2, True)] * (NFE + 1)
    params = stack([Params.zeros(NFE + 1, True)] * 2)
    choices = stack([Choices.from_steps(steps)] * 2)
    start = np.asarray(ev.batch_loss(params, choices))
    _, const = ev.refine(params, choices, iters=8, lr=0.05)
    _, decay = ev.refine(params, choices, iters=8, lr=0.05, lr_end=0.001)
    assert np.all(np.asarray(decay) <= start) and np.all(np.asarray(const) <= start)
    assert np.all(np.asarray(decay) < start)  # the first steps (lr near 0.05) move it


def test_dp_grid_starts_every_candidate_from_the_gits_times(problem, tmp_path):
    """``SearchConfig(dp_grid=G)``: the initial times are the DP times on G intervals
    (saved in the checkpoint), and the search stays within budget and at least as
    good as DDIM on those times."""
    data, den, teacher = problem
    cfg = SearchConfig().set(population=dict(size=12, generations=1, elites=2, refine_iters=5),
                             refine=dict(iters=10, finalists=2), polish=dict(iters=0),
                             space=dict(afs=(True,)), dp_times=dict(grid=24),
                             plan_fit=dict(iters=0))
    ck = tmp_path / "ck.json"
    res = search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=cfg, checkpoint=ck,
                 progress=False, model_name="gauss4")
    assert res["nfe"] == NFE
    ts, _ = dp_timesteps(den, S, NFE + 1, teacher.x_cal[:32], t_start=T0, t_end=T1, grid=24)
    init = json.loads(ck.read_text())["structures"]["afs=1"]["init"]["theta"]
    np.testing.assert_allclose(init, theta_from_times(S, ts), rtol=0, atol=1e-9)
    path = tmp_path / "r.json"
    atomic_write_json(path, res)
    run = jax.jit(lambda p, x: sample(den, p, x))
    searched = error_summary(run(load_plan(path, S), teacher.x_eval), teacher.ref_eval)
    ts_n, _ = dp_timesteps(den, S, NFE, teacher.x_cal[:32], t_start=T0, t_end=T1, grid=24)
    dp_ddim = error_summary(run(ddim(S, ts_n), teacher.x_eval), teacher.ref_eval)
    assert searched["median_rmse"] <= dp_ddim["median_rmse"], (searched, dp_ddim)


def test_resized_schedules_keep_their_shape(problem, result, tmp_path):
    """``load_plan(path, schedule, nfe)``: the same NFE reproduces the plan; NFE +/- 1
    spend exactly that budget, keep the ends and stay ahead of DDIM at that NFE."""
    data, den, teacher = problem
    path = tmp_path / "r.json"
    atomic_write_json(path, result)
    same = load_plan(path, S, NFE)
    np.testing.assert_allclose(same.t, load_plan(path, S).t, rtol=0, atol=1e-10)
    run = jax.jit(lambda p, x: sample(den, p, x))
    for nfe in (NFE - 1, NFE + 1):
        plan = load_plan(path, S, nfe)
        assert plan.nfe == nfe
        resized = resize_result(load_result(path), nfe, S)
        assert resized["timesteps"][0] == T0 and resized["timesteps"][-1] == T1
        assert np.all(np.diff(resized["timesteps"]) < 0)
        err = error_summary(run(plan, teacher.x_eval), teacher.ref_eval)["median_rmse"]
        base = error_summary(run(ddim(S, kl_optimal(S, nfe, t_start=T0, t_end=T1)),
                                 teacher.x_eval), teacher.ref_eval)["median_rmse"]
        assert err < base, (nfe, err, base)
    with pytest.raises(ValueError, match="cannot resize"):
        resize_result(load_result(path), 0, S)


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


def test_free_plan_tuning_is_saved_and_never_worse(problem, result, tmp_path):
    """The last phase tunes every coefficient of the best plan: the result records
    the tuned arrays, they reload exactly, the NFE is unchanged and the calibration
    loss did not increase."""
    data, den, teacher = problem
    tuning = result["search"]["plan_tuning"]
    assert tuning["iters"] == CONFIG.phase("plan_fit").iters
    assert tuning["loss"] <= tuning["loss_before"]
    path = tmp_path / "r.json"
    atomic_write_json(path, result)
    plan = load_plan(path, S)
    assert plan.nfe == NFE
    np.testing.assert_array_equal(np.asarray(plan.update.d), result["tuned_plan"]["update"]["d"])
    described = dict(load_result(path), tuned_plan=None)
    from samplax.search.result import plan_from_result

    untuned = plan_from_result(described, S)
    assert (tuning["method"], tuning["loss_name"]) == ("lm", "log_rmse")
    # the default objective: the mean log RMSE over the calibration noises
    cal = lambda p: float(jnp.mean(jnp.log(1e-12 + jnp.sqrt(jnp.mean(  # noqa: E731
        (sample(den, p, teacher.x_cal) - teacher.ref_cal) ** 2, -1)))))
    np.testing.assert_allclose(cal(untuned), tuning["loss_before"], rtol=1e-9)
    # this Gaussian problem is solved to ~1e-12, where round-off of the reloaded plan
    # shows in the log
    # then the output fit, from the tuned plan (kept only if it lowered the loss)
    fit = result["search"]["output_fit"]
    np.testing.assert_allclose(fit["loss_before"], tuning["loss"], rtol=1e-5)
    assert fit["loss"] <= fit["loss_before"]
    np.testing.assert_allclose(cal(plan), fit["loss"], rtol=1e-5)
    assert (np.ndim(result["tuned_plan"]["final"]["x"]) == 1) == fit["applied"]
    # in the coordinates ("basis": "auto", the default) where the fit ended lower
    assert fit["loss"] == min(fit["loss_by_basis"].values())
    assert fit["loss"] == fit["loss_by_basis"][fit["basis"]]
    assert ("basis" in result["tuned_plan"]) == (fit["basis"] == "pca")
    # the default metric, recorded beside the summaries: the mean per-sample RMSE
    met = result["objective"]["metric"]
    assert met["name"] == "rmse"
    np.testing.assert_allclose(met["heldout"], result["objective"]["heldout"]["mean_rmse"],
                               rtol=1e-12)
    # this teacher has no fitting noises: no per-coordinate fit of the slots
    assert result["search"]["coordinate_fit"] is None
    assert np.ndim(result["tuned_plan"]["update"]["x"]) == 1
    # resizing starts from the description: the tuned arrays belong to this budget
    assert "tuned_plan" not in resize_result(load_result(path), NFE + 1, S)


@pytest.mark.parametrize("method, loss", [("lm", "log_rmse"), ("lm", "mean_rmse"),
                                          ("lm", "sqrt_rmse"), ("adam", "mean_rmse")])
def test_tune_plan_improves_a_hand_made_plan(problem, method, loss):
    data, den, teacher = problem
    plan = ddim(S, kl_optimal(S, NFE, t_start=T0, t_end=T1))
    tuned, before, after, _ = tune_plan(den, S, plan, teacher.x_cal, teacher.ref_cal, iters=40,
                                     method=method, loss=loss, lr=0.003, lr_end=3e-5)
    assert tuned.nfe == plan.nfe and after < before
    run = jax.jit(lambda p, x: sample(den, p, x))
    held = [error_summary(run(p, teacher.x_eval), teacher.ref_eval)["median_rmse"]
            for p in (plan, tuned)]
    # 40 Adam steps only improve; the Gauss-Newton fit more than halves the error
    assert held[1] < (0.5 if method == "lm" else 1.0) * held[0], held


def test_levenberg_marquardt_beats_adam_on_the_free_plan(problem):
    """The default fit reaches a lower objective than 40 Adam steps and than itself
    with fewer steps (the reason it is the default)."""
    data, den, teacher = problem
    plan = ddim(S, kl_optimal(S, NFE, t_start=T0, t_end=T1))
    fit = lambda **kw: tune_plan(den, S, plan, teacher.x_cal, teacher.ref_cal,  # noqa: E731
                                 loss="mean_rmse", **kw)[2]
    adam = fit(iters=40, method="adam", lr=0.003, lr_end=3e-5)
    lm2, lm20 = fit(iters=2), fit(iters=20)
    assert lm20 <= lm2 and lm20 < 0.5 * adam, (lm2, lm20, adam)


def test_tune_plan_refuses_bad_options(problem):
    data, den, teacher = problem
    plan = ddim(S, kl_optimal(S, NFE, t_start=T0, t_end=T1))
    args = (den, S, plan, teacher.x_cal, teacher.ref_cal)
    with pytest.raises(ValueError, match="deterministic"):
        tune_plan(den, S, ddpm(S, jnp.linspace(T0, T1, 4)), teacher.x_cal, teacher.ref_cal,
                  iters=1, lr=0.001)
    with pytest.raises(ValueError, match="unknown tuning method 'bfgs'"):
        tune_plan(*args, iters=1, method="bfgs")
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        tune_plan(*args, iters=1, loss="mse")
    with pytest.raises(ValueError, match="learning rate"):
        tune_plan(*args, iters=1, method="adam")
    with pytest.raises(ValueError, match="plan_fit: unknown method 'newton'"):
        SearchConfig().set(plan_fit=dict(method="newton"))
    with pytest.raises(ValueError, match="unknown loss"):
        SearchConfig().set(plan_fit=dict(loss="l1"), output_fit=dict(loss="l1"),
                           coordinate_fit=dict(loss="l1"))


def test_continue_search_adds_the_plan_fit_to_a_saved_result(problem, result, tmp_path):
    """``continue_search``: a result searched without the plan fit gets it afterwards,
    its objective re-measured on the teacher's held-out noises."""
    data, den, teacher = problem
    path = tmp_path / "r.json"
    atomic_write_json(path, dict(result, tuned_plan=None))
    untuned = load_result(path)
    tuned = continue_search(untuned, [PlanFit(iters=10)], den, S, teacher)
    assert tuned["search"]["plan_tuning"]["loss"] <= tuned["search"]["plan_tuning"]["loss_before"]
    atomic_write_json(path, tuned)
    run = jax.jit(lambda p, x: sample(den, p, x))
    again = error_summary(run(load_plan(path, S), teacher.x_eval), teacher.ref_eval)
    assert again == tuned["objective"]["heldout"]


def test_bad_tuned_plans_are_rejected(result, tmp_path):
    bad = tmp_path / "bad.json"
    tuned = result["tuned_plan"]
    cases = {
        "shape": dict(tuned, t=tuned["t"] + [0.5]),
        "fields": {k: v for k, v in tuned.items() if k != "final"},
        "non-finite": dict(tuned, update=dict(tuned["update"], x=[float("nan")] * NFE)),
        "numbers": dict(tuned, evaluate=dict(tuned["evaluate"], x="oops")),
    }
    for match, broken in cases.items():
        bad.write_text(json.dumps(dict(result, tuned_plan=broken)))
        with pytest.raises(ResultError, match=match):
            load_plan(bad, S)


def test_continue_search_adds_the_output_fit_to_a_saved_result(problem, result, tmp_path):
    """A result saved before the output fit gets it afterwards
    (``continue_search``), its held-out objective re-measured and reproduced by
    the reloaded file."""
    data, den, teacher = problem
    path = tmp_path / "r.json"
    atomic_write_json(path, dict(result, tuned_plan=None))
    saved = load_result(path)
    fitted = continue_search(saved, [OutputFit(loss="mean_rmse")], den, S, teacher)
    rec = fitted["search"]["output_fit"]
    assert rec["applied"] and rec["loss"] < rec["loss_before"]
    run = jax.jit(lambda p, x: sample(den, p, x))
    untuned = error_summary(run(load_plan(path, S), teacher.x_eval), teacher.ref_eval)
    assert fitted["objective"]["heldout"]["median_rmse"] < untuned["median_rmse"]
    atomic_write_json(path, fitted)
    again = error_summary(run(load_plan(path, S), teacher.x_eval), teacher.ref_eval)
    assert again == fitted["objective"]["heldout"]


def test_population_map_is_the_vmap_in_chunks_on_cpu():
    """The population's evaluation: lax.map over chunks on CPU, vmap elsewhere; the
    same values either way, for a population that the chunks do not divide."""
    from samplax.search.population import population_map

    def f(a, b):
        return jnp.sum(jnp.sin(a) * b)

    a = jnp.arange(21.0).reshape(7, 3)
    b = jnp.linspace(0.0, 1.0, 21).reshape(7, 3)
    want = jax.vmap(f)(a, b)
    for backend, rows in (("cpu", 200), ("cpu", 1), ("gpu", 200)):
        np.testing.assert_allclose(population_map(f, rows, backend)(a, b), want, rtol=1e-14)
    jaxpr = str(jax.make_jaxpr(population_map(f, 200, "cpu"))(a, b))
    assert "scan" in jaxpr  # chunks of 512 // 200 = 2 candidates, run one after another
    assert "scan" not in str(jax.make_jaxpr(population_map(f, 200, "gpu"))(a, b))
