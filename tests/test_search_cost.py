"""The search's cost in network evaluations: every phase's count equals what a
denoiser that counts its own calls sees, the teacher's too, and a budget holds."""

import functools
import json

import jax
import jax.numpy as jnp
import pytest

import samplax.search.run as run_mod
from samplax.models import gaussian
from samplax.schedules import VPLinear
from samplax.search import SearchConfig, make_teacher, search
from samplax.search.context import Context, Objective
from samplax.search.cost import Cost
from samplax.search.driver import run_phases
from samplax.search.phases import (
    CoordinateFit,
    DPTimes,
    OutputFit,
    PlanFit,
    Population,
    Refine,
)
from samplax.search.run import phase_budget
from samplax.search.state import SearchState

S = VPLinear()
T0, T1 = 1.0, 1e-3
NFE = 3
DIM = 3
DATA = gaussian(jnp.array([0.5, -0.3, 1.0]), jnp.array([0.3, 1.0, 0.6]) ** 2)


def counting(base, counts: dict, mode: str):
    """``base`` with its calls counted per sample: forward passes always; with
    ``mode="vjp"`` reverse-mode passes as ``backward``, with ``"jvp"`` forward-mode
    tangents as ``tangent`` (JAX cannot have both on one custom rule)."""

    def add(kind, x):
        counts[kind] += x.size // DIM

    def tap(kind, x):
        jax.debug.callback(functools.partial(add, kind), x)

    if mode == "vjp":
        @jax.custom_vjp
        def den(x, t):
            tap("forward", x)
            return base(x, t)

        def fwd(x, t):
            tap("forward", x)
            y, pull = jax.vjp(base, x, t)
            return y, pull

        def bwd(pull, g):
            tap("backward", g)
            return pull(g)

        den.defvjp(fwd, bwd)
        return den

    @jax.custom_jvp
    def den(x, t):
        tap("forward", x)
        return base(x, t)

    @den.defjvp
    def _(primals, tangents):
        y, dy = jax.jvp(base, primals, tangents)
        tap("forward", primals[0])
        tap("tangent", tangents[0])
        return y, dy

    return den


def fresh():
    return {"forward": 0, "backward": 0, "tangent": 0}


@pytest.fixture(scope="module")
def teacher():
    counts = fresh()
    den = counting(DATA.denoiser(S), counts, "vjp")
    t = make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, DIM)), T0, T1, n_cal=12,
                     n_eval=8, n_fit=8, n_grid=4, batch=8)
    return t, counts


def test_the_teachers_count_is_exact(teacher):
    t, counts = teacher
    assert sum(t.evaluations.values()) == counts["forward"] > 0
    assert set(t.evaluations) == {"calibration", "heldout", "fitting", "trajectories"}
    assert counts["backward"] == counts["tangent"] == 0


def _context(den, teacher):
    return Context(den, S, NFE, teacher, T0, T1, SearchConfig().space, Objective.of(), 0)


def _check_phase(phase, state, den, counts, t):
    """Run ``phase`` alone on ``state`` with the counting ``den``; its recorded cost
    must be what ``den`` counted, and its estimate exact (fixed work) or a bound."""
    for k in counts:
        counts[k] = 0
    ctx = _context(den, t)
    estimate = phase.estimate(state, ctx)
    state = run_phases([phase], state, ctx)
    assert phase.name in state.records, state.skipped
    got = state.cost[phase.name]
    assert got == Cost(counts["forward"], counts["backward"], counts["tangent"]), (
        phase.name, got, counts)
    assert got.total > 0
    if isinstance(phase, PlanFit | DPTimes):  # data-dependent work: a bound
        assert got.total <= estimate.total, (phase.name, estimate, got)
    else:
        assert estimate == got, (phase.name, estimate, got)
    return state


def test_every_phase_counts_what_it_runs(teacher):
    """Each phase's count equals a counting denoiser's: forward passes, reverse-mode
    passes (vjp) and forward-mode tangents (jvp: the Levenberg-Marquardt Jacobian)."""
    t, _ = teacher
    counts = fresh()
    den = counting(DATA.denoiser(S), counts, "vjp")
    state = _check_phase(DPTimes(grid=8, noises=4), SearchState.new({}), den, counts, t)
    for phase in (Population(size=5, generations=2, elites=2, refine_iters=3),
                  Refine(iters=4), PlanFit(iters=4, method="adam")):
        state = _check_phase(phase, state, den, counts, t)
    jvp_counts = fresh()
    lm = PlanFit(name="plan_fit_lm", iters=3, max_calls=7)
    state = _check_phase(lm, state, counting(DATA.denoiser(S), jvp_counts, "jvp"),
                         jvp_counts, t)
    for phase in (OutputFit(), CoordinateFit(iters=20, n_fit=8)):
        state = _check_phase(phase, state, den, counts, t)


SMALL = SearchConfig().set(population=dict(size=4, generations=2, elites=1, refine_iters=2),
                           refine=dict(iters=6, finalists=1), polish=dict(iters=4),
                           plan_fit=dict(iters=2), coordinate_fit=dict(iters=20, n_fit=8),
                           space=dict(afs=(False,)))


def test_result_and_checkpoint_carry_the_cost(teacher, tmp_path):
    t, _ = teacher
    den = DATA.denoiser(S)
    ck = tmp_path / "ck.json"
    res = search(den, S, NFE, t, t_start=T0, t_end=T1, config=SMALL, checkpoint=ck,
                 progress=False)
    cost = res["cost"]
    phases = sum(c["total"] for c in cost["phases"].values())
    teacher_part = t.evaluations["calibration"] + t.evaluations["fitting"] + \
        t.evaluations["trajectories"]
    assert cost["teacher"]["total"] == teacher_part
    assert cost["evaluations"] == phases + teacher_part
    assert cost["excluded"]["teacher_heldout"] == t.evaluations["heldout"]
    # held-out, calibration, and the calibration trajectories
    assert cost["excluded"]["report"]["forward"] == (8 + 12 + 12) * NFE
    assert json.loads(ck.read_text())["cost"] == cost["phases"]


def test_a_budget_is_never_exceeded_and_survives_resume(teacher, tmp_path, monkeypatch):
    t, _ = teacher
    den = DATA.denoiser(S)
    full = search(den, S, NFE, t, t_start=T0, t_end=T1, config=SMALL, progress=False)
    teacher_part = full["cost"]["teacher"]["total"]
    budget = teacher_part + (full["cost"]["evaluations"] - teacher_part) // 2
    kw = dict(t_start=T0, t_end=T1, config=SMALL, progress=False, max_evals=budget)
    res = search(den, S, NFE, t, **kw)
    assert res["cost"]["evaluations"] <= budget < full["cost"]["evaluations"]
    assert res["search"]["phases"]["budget"]["cut"] or res["search"]["skipped"]
    # killed after the third step, resumed: the same result, the same cost
    ck, writes = tmp_path / "ck.json", []

    class Killed(Exception):
        pass

    def write_then_die(path, obj):
        real(path, obj)
        writes.append(path)
        if len(writes) == 3:
            raise Killed

    real = run_mod.atomic_write_json
    monkeypatch.setattr(run_mod, "atomic_write_json", write_then_die)
    with pytest.raises(Killed):
        search(den, S, NFE, t, checkpoint=ck, **kw)
    monkeypatch.setattr(run_mod, "atomic_write_json", real)
    assert json.loads(ck.read_text())["records"]["budget"]["phases"] > 0
    again = search(den, S, NFE, t, checkpoint=ck, **kw)
    assert again["cost"] == res["cost"]
    assert again["timesteps"] == res["timesteps"]


def test_a_budget_too_small_is_refused_before_any_work(teacher):
    t, _ = teacher
    counts = fresh()
    den = counting(DATA.denoiser(S), counts, "vjp")
    with pytest.raises(ValueError, match="smallest sensible budget is"):
        search(den, S, NFE, t, t_start=T0, t_end=T1, config=SMALL, progress=False,
               max_evals=100)
    assert counts == fresh()
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            phase_budget(bad, SMALL, _context(den, t))


def test_a_phase_that_will_skip_gets_no_share(teacher):
    """Coordinate fit without fitting noises would skip: a budget reserves nothing
    for it, and the other phases are planned with what the budget holds."""
    from samplax.search.driver import plan_shares

    t, _ = teacher
    ctx = _context(DATA.denoiser(S), t._replace(x_fit=None, ref_fit=None))
    phases = SMALL.phases
    shares = plan_shares(phases, SearchState.new({}), ctx, 10**9)
    assert "coordinate_fit" not in shares and "population" in shares
    assert shares["population"] > 0


def test_named_budgets():
    from samplax.search.budgets import BUDGETS, get_budget

    assert list(BUDGETS) == ["fast", "default", "thorough"]
    assert BUDGETS["fast"].max_evals == 100_000 and BUDGETS["default"].max_evals == 1_000_000
    assert BUDGETS["thorough"].max_evals is None
    assert BUDGETS["thorough"].config() == SearchConfig()
    fast = BUDGETS["fast"].config()
    assert fast.phase("population").generations == 1
    assert fast.phase("coordinate_fit").n_fit == 0  # no extra teacher noises
    # on top of another config: the budget's settings win, the rest stays
    assert BUDGETS["fast"].config(SearchConfig(seed=3)).seed == 3
    assert "at most 100,000 evaluations" in BUDGETS["fast"].describe()
    with pytest.raises(ValueError, match="unknown budget 'huge'.*fast"):
        get_budget("huge")
