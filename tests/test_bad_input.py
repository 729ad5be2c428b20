"""Bad input gets a clear, early error: infeasible budgets at once, result files
checked field by field, results refused on another schedule or model."""

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.cli import main
from samplax.schedules import VPLinear
from samplax.search import ResultError, load_plan, load_result
from samplax.solvers.executor import sample
from samplax.solvers.registry import SOLVERS, steps_for_nfe

SAVED = str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"
            / "search_gmm64_nfe5.json")


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_registered_cost_grows_with_the_steps(name):
    """What lets ``steps_for_nfe`` bisect instead of scanning every step count."""
    spec = SOLVERS[name]
    for to_zero in (False, True):
        costs = [spec.cost(n, to_zero) for n in range(spec.min_steps, 200)]
        assert all(b > a for a, b in zip(costs, costs[1:])), (name, to_zero)


def test_infeasible_budgets_fail_at_once():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="heun cannot spend exactly 1000000000 NFE; feasible "
                                         "budgets near it: .*999999999, 1000000001"):
        steps_for_nfe(SOLVERS["heun"], 10**9)
    assert time.perf_counter() - t0 < 0.5
    assert steps_for_nfe(SOLVERS["heun"], 10**9 + 1) == 500_000_001
    for bad, err, match in [(5.0, TypeError, "nfe must be an integer, got 5.0"),
                            (True, TypeError, "nfe must be an integer"),
                            (0, ValueError, "nfe must be >= 1, got 0")]:
        with pytest.raises(err, match=match):
            steps_for_nfe(SOLVERS["ddim"], bad)


def _broken(tmp_path, change):
    obj = json.loads(open(SAVED).read())
    change(obj)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("field, value, match", [
    ("corrector", "false", r"steps\[0\].corrector must be true or false, got 'false'"),
    ("corrector", 0, r"steps\[0\].corrector must be true or false, got 0"),
    ("order", 3.7, r"steps\[0\].order must be an integer in 1..4, got 3.7"),
    ("order", True, r"steps\[0\].order must be an integer in 1..4, got True"),
    ("order", 9, r"steps\[0\].order must be an integer in 1..4, got 9"),
    ("prediction", "x0", r"steps\[0\].prediction must be 'data' or 'noise', got 'x0'"),
])
def test_result_steps_are_checked_strictly(tmp_path, field, value, match):
    path = _broken(tmp_path, lambda o: o["steps"][0].update({field: value}))
    with pytest.raises(ResultError, match=match):
        load_result(path)


@pytest.mark.parametrize("change, match", [
    (lambda o: o.update(nfe=5.0), "field 'nfe' missing or not a int"),
    (lambda o: o.update(nfe=True), "field 'nfe' missing or not a int"),
    (lambda o: o.update(afs="false"), "field 'afs' missing or not a bool"),
    (lambda o: o["steps"][0].pop("order"), r"steps\[0\] must have exactly the fields"),
    (lambda o: o["steps"].__setitem__(0, "data"), r"steps\[0\] must have exactly"),
])
def test_result_fields_are_checked_strictly(tmp_path, change, match):
    with pytest.raises(ResultError, match=match):
        load_result(_broken(tmp_path, change))


def test_a_result_is_refused_on_another_schedule():
    with pytest.raises(ResultError, match=r"searched for VPLinear\(beta_max=20.0\), this "
                                          "schedule has beta_max=10.0"):
        load_plan(SAVED, VPLinear(beta_max=10.0))
    assert load_plan(SAVED, VPLinear(beta_max=10.0), check_schedule=False).nfe == 5
    assert load_plan(SAVED, VPLinear()).nfe == 5


def test_the_cli_refuses_a_schedule_of_another_model(tmp_path, capsys):
    out = str(tmp_path / "x.npy")
    with pytest.raises(SystemExit, match="searched for --model gmm64, not gauss64; pass "
                                         "--other-model"):
        main(["sample", "--model", "gauss64", "--schedule", SAVED, "--out", out])
    with pytest.raises(SystemExit, match="searched for --model gmm64, not gauss64"):
        main(["compare", "--model", "gauss64", "--searched", SAVED])
    assert main(["sample", "--model", "gauss64", "--schedule", SAVED, "--other-model",
                 "--n", "4", "--out", out]) == 0
    with pytest.raises(SystemExit, match="cannot use .*not a JSON file"):
        main(["sample", "--schedule", __file__, "--out", out])


# --- the checked mode: sample(check=True) names the first non-finite slot -------------


def _nan_from_slot(den, plan, slot):
    def bad(x, t):
        return jnp.where(t <= plan.t[slot], jnp.nan, den(x, t))

    return bad


@pytest.fixture(scope="module")
def checked():
    from samplax.models.builtin import builtin
    from samplax.solvers.registry import plan_for_nfe

    p = builtin("gmm64")
    plan = plan_for_nfe("dpm_solver_pp_2m", p.schedule, 6)
    return p, plan, p.x_T(jax.random.key(0), 4)


def test_check_names_the_slot_where_the_model_output_went_non_finite(checked):
    p, plan, x = checked
    bad = _nan_from_slot(p.denoiser, plan, 2)
    assert bool(jnp.all(jnp.isnan(sample(bad, plan, x))))  # unchecked: silent, by default
    with pytest.raises(FloatingPointError, match=r"model output became non-finite at slot "
                                                 r"2 \(t = 0\.6"):
        sample(bad, plan, x, check=True)
    with pytest.raises(FloatingPointError, match="at slot 2"):
        jax.vmap(lambda x: sample(bad, plan, x, check=True))(x[:, None])
    # compiled: the runtime wraps the error, the message is inside
    with pytest.raises(Exception, match="model output became non-finite at slot 2"):
        jax.jit(lambda x: sample(bad, plan, x, check=True))(x)


def test_check_names_a_non_finite_initial_noise_and_passes_a_good_run(checked):
    p, plan, x = checked
    with pytest.raises(FloatingPointError, match="x_T is not finite"):
        sample(p.denoiser, plan, x.at[1, 3].set(jnp.inf), check=True)
    np.testing.assert_array_equal(sample(p.denoiser, plan, x, check=True),
                                  sample(p.denoiser, plan, x))


def test_a_denoiser_returning_integers_is_refused(checked):
    p, plan, x = checked
    with pytest.raises(TypeError, match="denoiser returned dtype int"):
        sample(lambda x, t: jnp.round(x).astype(jnp.int32), plan, x)


def test_cli_sample_is_checked(tmp_path, monkeypatch):
    """samplax sample runs checked: a model that returns NaN ends with a message that
    names the slot, and no file."""
    import samplax.cli as cli
    from samplax.models.builtin import builtin

    p = builtin("gmm64")

    class NaNData:  # a data model whose denoiser breaks below t = 0.5
        dim = p.data.dim

        def denoiser(self, schedule):
            den = p.data.denoiser(schedule)
            return lambda x, t: jnp.where(t < 0.5, jnp.nan, den(x, t))

    monkeypatch.setattr(cli, "load_problem", lambda name: p._replace(data=NaNData()))
    out = tmp_path / "x.npy"
    with pytest.raises(SystemExit, match=r"samplax sample: sample\(check=True\): the model "
                                         r"output became non-finite at slot \d"):
        cli.main(["sample", "--model", "gmm64", "--nfe", "6", "--n", "4", "--out", str(out)])
    assert not out.exists()


# --- identity: a result or a plan used with another model or schedule -----------------


def test_a_result_is_refused_for_a_model_of_another_fingerprint(tmp_path):
    """Retrained weights under one name: the fingerprint recorded with the result tells."""
    from samplax.models.builtin import builtin

    fp = builtin("gmm64").fingerprint
    path = str(_broken(tmp_path, lambda o: o.update(model_fingerprint="0123456789abcdef")))
    out = str(tmp_path / "x.npy")
    with pytest.raises(SystemExit, match=f"searched for a model gmm64 of fingerprint "
                                         f"0123456789abcdef; this one's is {fp}"):
        main(["sample", "--model", "gmm64", "--schedule", path, "--out", out])
    with pytest.raises(SystemExit, match="of fingerprint 0123456789abcdef"):
        main(["export", path, "--model", "gmm64"])
    assert main(["sample", "--model", "gmm64", "--schedule", path, "--other-model",
                 "--n", "4", "--out", out]) == 0
    ok = str(_broken(tmp_path, lambda o: o.update(model_fingerprint=fp)))
    assert main(["sample", "--model", "gmm64", "--schedule", ok, "--n", "4", "--out", out]) == 0
    bad = _broken(tmp_path, lambda o: o.update(model_fingerprint=7))
    with pytest.raises(ResultError, match="field 'model_fingerprint' must be a string, got 7"):
        load_result(bad)


def test_fingerprints_tell_models_apart_whatever_the_precision():
    from samplax.models.builtin import builtin, model_fingerprint
    from samplax.models.gaussian import gaussian

    names = ["gmm64", "gauss64", "gmm2d", "digits"]
    fps = [builtin(n).fingerprint for n in names]
    assert len(set(fps)) == len(names) and all(len(f) == 16 for f in fps)
    with jax.enable_x64(True):
        assert builtin("gmm64").fingerprint == fps[0]
    assert model_fingerprint(gaussian(jnp.zeros(3), jnp.ones(3))) != model_fingerprint(
        gaussian(jnp.zeros(3), 2 * jnp.ones(3)))
    assert model_fingerprint(object()) is None


def test_a_result_with_non_finite_times_is_refused(tmp_path):
    path = _broken(tmp_path, lambda o: o["timesteps"].__setitem__(2, float("nan")))
    with pytest.raises(ResultError, match="field 'timesteps' must hold finite numbers"):
        load_result(path)


def test_a_plan_of_another_schedule_is_refused_where_it_meets_the_denoiser():
    from samplax.models.adapters import from_epsilon
    from samplax.models.builtin import builtin
    from samplax.solvers.registry import plan_for_nfe

    p = builtin("gmm64")  # VPLinear(beta_max=20)
    x = p.x_T(jax.random.key(0), 4)
    plan = plan_for_nfe("ddim", VPLinear(beta_max=10.0), 5)
    with pytest.raises(ValueError, match=r"the plan was built on another noise schedule than "
                                         r"the denoiser's VPLinear\(.*beta_max=20.0\): at "
                                         r"slot 0 \(t = 1\) the plan has sigma = "):
        sample(p.denoiser, plan, x)
    with pytest.raises(ValueError, match="another noise schedule"):  # a constant under jit
        jax.jit(lambda x: sample(p.denoiser, plan, x))(x)
    eps_model = from_epsilon(lambda x, t: jnp.zeros_like(x), VPLinear(beta_max=10.0))
    sample(eps_model, plan, x)  # the same schedule passes
    with pytest.raises(ValueError, match="another noise schedule"):
        sample(eps_model, plan_for_nfe("ddim", p.schedule, 5), x)
