"""The search as data: phases over a typed state, one driver, settings by phase name,
the keep-best optimizer driver, and the state's JSON round trip."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samplax.models import gaussian
from samplax.optimize import make_minimizer
from samplax.schedules import VPLinear
from samplax.search import DEFAULT_PHASES, Phase, SearchConfig, make_teacher, search
from samplax.search.context import Context, Objective
from samplax.search.driver import Clock, run_phases
from samplax.search.space import SearchSpace
from samplax.search.state import SearchState, current_plan, state_from_json, state_to_json

S = VPLinear()
T0, T1 = 1.0, 1e-3
NFE = 2
SMALL = SearchConfig().set(population=dict(size=6, generations=1, elites=1, refine_iters=3),
                           refine=dict(iters=5, finalists=1), polish=dict(iters=0),
                           space=dict(afs=(False,)), plan_fit=dict(iters=2))


CALLS = []


@dataclasses.dataclass(frozen=True)
class Halve(Phase):
    """A toy phase: the current plan with its output scaled by ``factor``."""

    name: str = "halve"
    factor: float = 1.0

    def step(self, state, ctx):
        CALLS.append(self.factor)
        plan = current_plan(state, ctx)
        plan = plan._replace(final=plan.final._replace(x=plan.final.x * self.factor))
        return state.with_record(self.name, {"factor": self.factor}, plan)


@pytest.fixture(scope="module")
def problem():
    data = gaussian(jnp.array([0.5, -0.3, 1.0]), jnp.array([0.3, 1.0, 0.6]) ** 2)
    den = data.denoiser(S)
    teacher = make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, 3)), T0, T1,
                           n_cal=16, n_eval=32)
    return den, teacher


def test_a_new_phase_is_one_class_and_one_list_entry(problem, tmp_path):
    den, teacher = problem
    toy = Halve(factor=1.0)
    config = dataclasses.replace(SMALL, phases=SMALL.phases[:3] + (toy,))
    ck = tmp_path / "ck.json"
    kw = dict(t_start=T0, t_end=T1, config=config, checkpoint=ck, progress=False)
    res = search(den, S, NFE, teacher, **kw)
    assert res["search"]["phases"]["halve"] == {"factor": 1.0} and CALLS == [1.0]
    assert json.loads(ck.read_text())["records"]["halve"] == {"factor": 1.0}
    # the phase's setting is addressed by its name and changes the search's identity
    other = config.set_path("halve.factor", 0.5)
    assert other.phase("halve").factor == 0.5 and other.key() != config.key()
    # a finished checkpoint holds the phase: resuming does not run it again
    again = search(den, S, NFE, teacher, **kw)
    assert CALLS == [1.0] and again["objective"] == res["objective"]
    # the default pipeline's skipped phases say why
    assert res["search"]["skipped"] == {"dp_times": "grid=0: the times start uniform in "
                                                    "log-SNR"}
    with pytest.raises(ValueError, match="unique"):
        SearchConfig(phases=(toy, toy))


def test_the_driver_skips_what_the_time_limit_leaves(problem):
    den, teacher = problem
    ctx = Context(den, S, NFE, teacher, T0, T1, SearchSpace(afs=(False,)), Objective.of())
    state = run_phases(SMALL.phases[1:3], SearchState.new({}), ctx)
    assert set(state.records) == {"population", "refine"}
    late = run_phases([Halve(factor=0.5)], state, ctx, clock=Clock.started(limit=-1.0))
    assert late.skipped == {"halve": "time limit"} and "halve" not in late.records
    with pytest.raises(RuntimeError, match="time limit"):
        search(den, S, NFE, teacher, t_start=T0, t_end=T1, config=SMALL, time_limit=0.0,
               progress=False)


def test_the_state_round_trips_through_json(problem):
    den, teacher = problem
    ctx = Context(den, S, NFE, teacher, T0, T1, SearchSpace(afs=(False,)), Objective.of())
    state = run_phases(SMALL.phases[1:5], SearchState.new({"a": 1}), ctx)
    blob = json.loads(json.dumps(state_to_json(state)))
    back = state_from_json(blob, ctx)
    assert back.ident == state.ident and back.records == state.records
    assert back.counters == state.counters
    st, st2 = (next(iter(x.structures.values())) for x in (state, back))
    assert st2.population == st.population and st2.rng == st.rng
    for a, b in zip(st.archive + st.finalists, st2.archive + st2.finalists):
        assert a.steps == b.steps and a.loss == b.loss
        jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, state.plan, back.plan)
    with pytest.raises(ValueError, match="not a search checkpoint"):
        state_from_json({"ident": {}}, ctx)


def test_settings_by_phase_name_and_old_flat_names():
    c = SearchConfig()
    assert [p.name for p in c.phases] == [p.name for p in DEFAULT_PHASES] == [
        "dp_times", "population", "refine", "polish", "plan_fit", "output_fit",
        "coordinate_fit"]
    assert c.set_path("coordinate_fit.iters", 0).phase("coordinate_fit").iters == 0
    assert c.set(space={"afs": [True]}).space.afs == (True,)
    with pytest.warns(DeprecationWarning, match="coordinate_fit.iters"):
        assert c.set_path("coordinate_iters", 7).phase("coordinate_fit").iters == 7
    with pytest.warns(DeprecationWarning, match="plan_fit.loss, output_fit.loss"):
        d = c.set(plan_loss="mean_rmse")
    assert {d.phase(n).loss for n in ("plan_fit", "output_fit", "coordinate_fit")} == {
        "mean_rmse"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert c.set(finalists=3).phase("population").archive == 12
    for path, value, err, match in [
            ("nope", 1, KeyError, "no such setting"),
            ("population.nope", 1, KeyError, "Population has no setting 'nope'"),
            ("population.size", 1.5, TypeError, "population.size takes a int"),
            ("population.size", 0, ValueError, "size >= 1"),
            ("refine.lr_end", "x", TypeError, "a number or null"),
            ("output_fit.enabled", 1, TypeError, "takes a bool"),
            ("space.orders", [5], ValueError, "orders in 1..4")]:
        with pytest.raises(err, match=match):
            c.set_path(path, value)


def test_the_pipeline_says_what_teacher_data_it_needs():
    c = SearchConfig()
    assert c.teacher_needs(Objective.of()) == {"n_fit": 2048, "n_grid": 0}
    assert c.teacher_needs(Objective.of("energy")) == {"n_fit": 0, "n_grid": 0}
    assert c.teacher_needs(Objective.of(None, 1.0)) == {"n_fit": 0, "n_grid": 65}
    assert c.set(coordinate_fit={"iters": 0}).teacher_needs(Objective.of())["n_fit"] == 0
    assert c.set(coordinate_fit={"n_fit": 64}).teacher_needs(Objective.of())["n_fit"] == 64


def test_the_keep_best_minimizer():
    """Never worse than the start; masked leaves stay; a batch is each candidate alone;
    a score chooses among the scored iterates; non-finite steps leave a point alone."""
    loss = lambda p, a: jnp.sum((p["x"] - a) ** 2) + jnp.sum(p["y"] ** 2)  # noqa: E731
    p0 = {"x": jnp.array([3.0, -1.0]), "y": jnp.array([1.0])}
    out = make_minimizer(loss, mask={"x": True, "y": False}).run(p0, 0.5, iters=50, lr=0.1)
    assert float(out.loss) < float(out.start) == float(loss(p0, 0.5))
    np.testing.assert_array_equal(out.params["y"], p0["y"])
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), p0)
    aux = jnp.array([0.5, -0.5])
    batch = make_minimizer(loss, batched=True).run(stacked, aux, iters=20,
                                                   lr=optax.cosine_decay_schedule(0.1, 19))
    for i in range(2):
        one = make_minimizer(loss).run(jax.tree.map(lambda a, i=i: a[i], stacked), aux[i],
                                       iters=20, lr=optax.cosine_decay_schedule(0.1, 19))
        np.testing.assert_allclose(batch.loss[i], one.loss, rtol=1e-12)
    scored = make_minimizer(loss).run(p0, 0.5, iters=40, lr=0.1, checks=4,
                                      score=lambda p: float(loss(p, 0.0)))
    assert scored.loss <= scored.start == float(loss(p0, 0.0))
    nan = make_minimizer(lambda p, a: jnp.sum(p["x"]) * jnp.nan).run(p0, None, iters=3,
                                                                     lr=0.1)
    np.testing.assert_array_equal(nan.params["x"], p0["x"])
