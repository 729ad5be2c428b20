"""Conformance suite: every solver of :data:`samplax.solvers.registry.SOLVERS`.

Like optax's ``_common_test.py`` or diffrax's ``all_ode_solvers``, each property is
one test parametrized over the registry, so a newly registered solver is checked
without new test code:

* NFE accounting: ``plan.nfe == spec.nfe(n)`` for several step counts, and
  ``steps_for_nfe`` inverts it;
* jit equals eager (1e-12): the jitted sampler against the same plan run under
  ``jax.disable_jit()``, i.e. op by op with ``lax.scan`` unrolled in Python;
* traced at most once per shape: the solver's jitted program
  (``chex.assert_max_traces(n=1)``) is called with different time arrays of the
  same length;
* ``vmap`` over samples equals the batch call; ``vmap`` over stacked plans
  (``stack_plans``, buffers padded) equals separate calls;
* ``jax.grad`` of a sample loss w.r.t. the interior timesteps is finite and
  agrees with central differences, and traced times build the same plan as
  concrete times;
* a float32 run is finite (and close to float64);
* a last time with ``sigma = 0`` (EDM, ``karras(..., append_zero=True)``) gives
  finite samples and gradients, the same with traced times as with concrete
  ones, and the registry's ``cost(n, to_zero=True)`` evaluations;
* non-monotone times raise ``ValueError``.

Plus the first-order equivalence DDIM == DPM-Solver-1 == DPM-Solver++1 == Euler
(EDM view) == UniPC-1 (no corrector) == DEIS-1 == iPNDM-1.

Cost: XLA compilation dominates, so everything runs on one tiny mixture (dim 3,
6 samples) with 3 steps, and each solver compiles exactly one program (see
:func:`_program`) whose outputs the property tests share. If that program fails to
trace, every test of that solver that uses it errors with the same message.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import GaussianMixture
from samplax.schedules import EDM, VPLinear, steps
from samplax.solvers import ddim, deis, dpm_solver, dpm_solver_pp, euler, ipndm, unipc
from samplax.solvers.executor import sample
from samplax.solvers.plan import pad_plan, stack_plans
from samplax.solvers.registry import SOLVERS, plan_for_nfe, steps_for_nfe
from samplax.solvers.usf import Step, usf

NAMES = list(SOLVERS)

# One shared tiny problem: a 3-component diagonal mixture in 3 dimensions.
_WEIGHTS = [0.3, 0.3, 0.4]
_MEANS = [[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5], [0.0, -1.5, 1.5]]
_VARIANCES = [0.25, 0.16, 0.36]
MIX = GaussianMixture.diagonal(jnp.array(_WEIGHTS), jnp.array(_MEANS), jnp.array(_VARIANCES))

VP = VPLinear()
DEN_VP = MIX.denoiser(VP)
X = jax.random.normal(jax.random.key(0), (6, 3))
N_STEPS = 3
# Two time arrays of the same length: same plan shapes, different values.
TS_A = steps.uniform_logsnr(VP, N_STEPS, t_start=1.0, t_end=1e-3)
TS_B = steps.karras(VP, N_STEPS, t_start=1.0, t_end=1e-3)

# Gradients and sigma = 0: the EDM schedule (alpha = 1, sigma = t), Karras times.
EDM_S = EDM()
DEN_EDM = MIX.denoiser(EDM_S)
X_EDM = EDM_S.t_max * X
GRAD_STEPS = 3
# F-PNDM's three pseudo-Runge-Kutta warm-up steps may not reach sigma = 0: one more.
GRAD_STEPS_FOR = {"pndm_f": 4}

# No registered solver refuses sigma = 0: data forms are exact there, noise forms
# (DPM-Solver, UniPC) take the finite limit alpha_t x0_hat of their last step, and
# sigma_tilde integrators (DEIS, (i)PNDM, Euler, Heun) land on sigma_tilde = 0.
EXPECTED_SIGMA0_RAISE: set[str] = set()


def _steps(name: str) -> int:
    return max(N_STEPS, SOLVERS[name].min_steps)


@functools.cache
def _edm_times(name):
    """Karras times 80 -> 0.002, and the same number of steps ending at t = 0."""
    n = GRAD_STEPS_FOR.get(name, GRAD_STEPS)
    return steps.karras(EDM_S, n), steps.karras(EDM_S, n, append_zero=True)


@functools.cache
def _vp_plans(name):
    spec = SOLVERS[name]
    n = _steps(name)
    if n == N_STEPS:
        return spec.build(VP, TS_A), spec.build(VP, TS_B)
    return (spec.build(VP, steps.uniform_logsnr(VP, n, t_start=1.0, t_end=1e-3)),
            spec.build(VP, steps.karras(VP, n, t_start=1.0, t_end=1e-3)))


def _split(ts):
    """Interior times (the variables of the gradient tests) and the two ends."""
    return ts[1:-1], ts[jnp.array([0, -1])]


@functools.cache
def _program(name):
    """The solver's one jitted program, and the list its traces append to.

    From VP plans it returns the batch sample, the sample ``vmap``-ped over the rows
    of ``X`` and over a stack of plans; from EDM interior and end times (traced) it
    returns ``jax.value_and_grad`` of a sample loss, with the sample and the plan.
    One program per solver keeps the file fast (compilation dominates); the tests
    below assert on its outputs property by property.
    """
    traces = []
    build = SOLVERS[name].build

    def edm_loss(inner, ends):
        plan = build(EDM_S, jnp.concatenate([ends[:1], inner, ends[1:]]))
        out = sample(DEN_EDM, plan, X_EDM)
        return jnp.mean(out**2), (out, plan)

    def program(plan, stacked, inner, ends):
        traces.append(None)
        (loss, (edm_out, edm_plan)), grad = jax.value_and_grad(edm_loss, has_aux=True)(
            inner, ends
        )
        return dict(
            batch=sample(DEN_VP, plan, X),
            rows=jax.vmap(lambda xi: sample(DEN_VP, plan, xi))(X),
            over_plans=jax.vmap(lambda p: sample(DEN_VP, p, X))(stacked),
            loss=loss,
            edm_out=edm_out,
            edm_plan=edm_plan,
            grad=grad,
        )

    # chex identifies a function by its name and source: make the name unique.
    program.__name__ = program.__qualname__ = f"program_{name}"
    return jax.jit(chex.assert_max_traces(program, n=1)), traces


@functools.cache
def _vp_inputs(name):
    """``(plan, stack)`` at TS_A and at TS_B. Each stack holds the plan, the other plan
    and a copy of the other with one more entry in each buffer it uses, which makes
    ``stack_plans`` re-index the ring buffers of the solver's own layout."""
    a, b = _vp_plans(name)

    def wider(p):
        hd, he = p.init_d.shape[0], p.init_e.shape[0]
        return pad_plan(p, hd + (hd > 0), he + (he > 0))

    return (a, stack_plans([a, b, wider(b)])), (b, stack_plans([b, a, wider(a)]))


@functools.cache
def _results(name):
    """Two calls of the program: VP plans at TS_A with EDM times ending at sigma > 0,
    and at TS_B with EDM times ending at sigma = 0 (same shapes: no retrace)."""
    run, _ = _program(name)
    ts_edm, ts_edm0 = _edm_times(name)
    r_a = run(*_vp_inputs(name)[0], *_split(ts_edm))
    r_b = run(*_vp_inputs(name)[1], *_split(ts_edm0))
    return jax.tree.map(np.asarray, r_a), jax.tree.map(np.asarray, r_b)


def _eager(den, plan, x):
    """Run without any compilation of the loop: ``lax.scan`` becomes a Python loop."""
    with jax.disable_jit():
        return np.asarray(sample(den, plan, x))


# --------------------------------------------------------------------------------------
# NFE accounting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_nfe_accounting(name):
    """For every step count the registry accepts (``>= min_steps``), the plan costs
    exactly ``spec.nfe(n)`` evaluations, and ``steps_for_nfe`` inverts it."""
    spec = SOLVERS[name]
    problems = []
    for n in sorted({spec.min_steps, 2, 5}):
        ts = steps.uniform_logsnr(VP, n, t_start=1.0, t_end=1e-3)
        nfe = spec.nfe(n)
        try:
            plan = spec.build(VP, ts)
        except ValueError as err:
            problems.append(f"{n} steps (min_steps={spec.min_steps}): {err}")
            continue
        if plan.nfe != nfe:
            problems.append(f"{n} steps give {plan.nfe} NFE, the registry says {nfe}")
            continue
        K = plan.nfe
        assert plan.t.shape == plan.alpha.shape == plan.sigma.shape == (K,)
        assert plan.evaluate.x.shape == plan.update.x.shape == (K,)
        assert plan.evaluate.d.shape == plan.update.d.shape == (K, plan.init_d.shape[0])
        assert plan.evaluate.e.shape == plan.update.e.shape == (K, plan.init_e.shape[0])
        assert not plan.stochastic
        t = np.asarray(plan.t)
        assert np.all(np.isfinite(t)) and np.all((t <= 1.0) & (t >= 1e-3)), t
        assert steps_for_nfe(spec, nfe) == n
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_nfe_accounting_to_sigma_zero(name):
    """Ending at sigma = 0 (EDM, t_end = 0): the plan costs ``spec.cost(n, True)``
    (DPM-Solver++(2S) saves the last midpoint), or the solver refuses with a
    ValueError that names sigma = 0; ``plan_for_nfe`` then spends the budget exactly."""
    spec = SOLVERS[name]
    edm = EDM()
    for n in sorted({max(spec.min_steps, 3), 5}):
        ts = jnp.concatenate([jnp.geomspace(edm.t_max, 0.01, n), jnp.zeros(1)])
        try:
            plan = spec.build(edm, ts)
        except ValueError as err:
            assert "sigma = 0" in str(err), err
            return
        assert plan.nfe == spec.cost(n, to_zero=True), (n, plan.nfe)
        nfe = spec.cost(n, to_zero=True)
        assert steps_for_nfe(spec, nfe, to_zero=True) == n
        assert plan_for_nfe(name, edm, nfe, "karras", t_end=0.0).nfe == nfe


# --------------------------------------------------------------------------------------
# jit, traces, vmap
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    r_a, _ = _results(name)
    assert np.all(np.isfinite(r_a["batch"]))
    np.testing.assert_allclose(r_a["batch"], _eager(DEN_VP, _vp_plans(name)[0], X),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_traced_once_per_shape(name):
    r_a, r_b = _results(name)  # two calls, different VP and EDM times, same shapes
    _, traces = _program(name)
    assert len(traces) == 1, f"{name}: the program was traced {len(traces)} times"
    assert not np.allclose(r_a["batch"], r_b["batch"]), "different times, same samples"


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_samples(name):
    for r in _results(name):
        np.testing.assert_allclose(r["rows"], r["batch"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_stacked_plans(name):
    r_a, r_b = _results(name)
    for r, other in ((r_a, r_b), (r_b, r_a)):
        # stacked: [this plan, the other plan, the other plan with wider buffers]
        for i, expected in enumerate((r["batch"], other["batch"], other["batch"])):
            np.testing.assert_allclose(r["over_plans"][i], expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# Gradients w.r.t. the timesteps; sigma = 0
# --------------------------------------------------------------------------------------


@functools.cache
def _edm0_plan(name):
    """The concrete sigma = 0 plan, or the ValueError its construction raises."""
    try:
        return SOLVERS[name].build(EDM_S, _edm_times(name)[1])
    except ValueError as err:
        return err


@pytest.mark.parametrize("name", NAMES)
def test_grad_wrt_interior_times(name):
    r, _ = _results(name)
    g = r["grad"]
    assert np.all(np.isfinite(g)), f"{name}: gradient {g}"
    assert np.any(g != 0)
    # Traced times build the plan that concrete times build.
    concrete = SOLVERS[name].build(EDM_S, _edm_times(name)[0])
    traced = jax.tree_util.tree_flatten_with_path(r["edm_plan"])[0]
    for (path, got), want in zip(traced, jax.tree.leaves(concrete), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                   err_msg=f"plan{jax.tree_util.keystr(path)}")
    # Directional derivative against central differences (relative steps in t).
    run, _ = _program(name)
    plan, stacked = _vp_inputs(name)[0]
    inner, ends = _split(_edm_times(name)[0])
    v = inner * jnp.linspace(1.0, -1.0, inner.shape[0])
    eps = 1e-6
    up = float(run(plan, stacked, inner + eps * v, ends)["loss"])
    down = float(run(plan, stacked, inner - eps * v, ends)["loss"])
    fd = (up - down) / (2 * eps)
    np.testing.assert_allclose(float(g @ v), fd, rtol=1e-5, atol=1e-8 * abs(float(r["loss"])))


@pytest.mark.parametrize("name", NAMES)
def test_sigma_zero_finite_or_raises(name):
    plan = _edm0_plan(name)
    if isinstance(plan, ValueError):
        assert "sigma = 0" in str(plan), f"{name}: unclear error: {plan}"
        assert name in EXPECTED_SIGMA0_RAISE, f"{name} unexpectedly refuses sigma = 0: {plan}"
        return
    concrete_out = _eager(DEN_EDM, plan, X_EDM)
    assert np.all(np.isfinite(concrete_out)), f"{name}: non-finite sample at sigma = 0"
    _, r = _results(name)  # the same times, traced
    assert np.all(np.isfinite(r["edm_out"])), f"{name}: non-finite sample with traced times"
    assert np.all(np.isfinite(r["grad"])), f"{name}: gradient {r['grad']}"
    # Traced times cannot lower the last step's order statically; the plan must gate
    # the higher-order terms instead and give the same samples.
    np.testing.assert_allclose(r["edm_out"], concrete_out, rtol=0, atol=1e-10)


def test_no_registered_solver_refuses_sigma_zero():
    raising = {n for n in NAMES if isinstance(_edm0_plan(n), ValueError)}
    assert raising == EXPECTED_SIGMA0_RAISE


# --------------------------------------------------------------------------------------
# float32, bad input
# --------------------------------------------------------------------------------------


@pytest.fixture
def reference64(name):
    """The float64 jitted sample, computed before the ``float32`` fixture switches."""
    return _results(name)[0]["batch"]


@pytest.mark.parametrize("name", NAMES)
def test_float32_run_is_finite(name, reference64, float32):
    mix = GaussianMixture.diagonal(jnp.array(_WEIGHTS), jnp.array(_MEANS),
                                   jnp.array(_VARIANCES))
    n = _steps(name)
    ts = steps.uniform_logsnr(VP, n, t_start=1.0, t_end=1e-3)
    plan = SOLVERS[name].build(VP, ts)
    assert plan.t.dtype == jnp.float32
    out = _eager(mix.denoiser(VP), plan, jnp.asarray(np.asarray(X), jnp.float32))
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out)), f"{name}: non-finite float32 sample"
    np.testing.assert_allclose(out, reference64, rtol=0, atol=1e-3 * np.abs(reference64).max())


@pytest.mark.parametrize("name", NAMES)
def test_non_monotone_times_raise(name):
    build = SOLVERS[name].build
    for ts in ([1.0, 0.2, 0.5, 0.1, 1e-3],  # goes back up
               [1.0, 0.5, 0.5, 0.1, 1e-3],  # repeats a time
               [1e-3, 0.1, 0.2, 0.5, 1.0]):  # data to noise
        with pytest.raises(ValueError, match="strictly decreasing"):
            build(VP, jnp.array(ts))


# --------------------------------------------------------------------------------------
# First-order equivalences
# --------------------------------------------------------------------------------------


def test_first_order_solvers_are_ddim():
    """DDIM == DPM-Solver-1 == DPM-Solver++1 == Euler (EDM view) == UniPC-1 without
    corrector == DEIS-1 == iPNDM-1 (and USF with one node), on a VP schedule."""
    ts = steps.uniform_logsnr(VP, 5, t_start=1.0, t_end=1e-3)
    plans = {
        "dpm_solver-1 multistep": dpm_solver(VP, ts, order=1, method="multistep"),
        "dpm_solver-1 singlestep": dpm_solver(VP, ts, order=1, method="singlestep"),
        "dpm_solver_pp-1 multistep": dpm_solver_pp(VP, ts, order=1),
        "dpm_solver_pp-1 singlestep": dpm_solver_pp(VP, ts, order=1, method="singlestep"),
        "euler": euler(VP, ts),
        "unipc-1 bh1 no corrector": unipc(VP, ts, order=1, variant="bh1", corrector=False),
        "unipc-1 bh2 no corrector": unipc(VP, ts, order=1, variant="bh2", corrector=False),
        "unipc-1 noise form no corrector": unipc(VP, ts, order=1, predict_x0=False,
                                                 corrector=False),
        "deis-1 tab": deis(VP, ts, order=1),
        "deis-1 rhoab": deis(VP, ts, order=1, method="rhoab"),
        "ipndm-1": ipndm(VP, ts, order=1),
        "ipndm_v-1": ipndm(VP, ts, order=1, variable_step=True),
        "usf data, 1 node": usf(VP, ts, Step("data", 1, False)),
        "usf noise, 1 node": usf(VP, ts, Step("noise", 1, False)),
    }
    ref = _eager(DEN_VP, ddim(VP, ts), X)
    for label, plan in plans.items():
        assert plan.nfe == 5, label
        np.testing.assert_allclose(_eager(DEN_VP, plan, X), ref, rtol=0, atol=1e-12,
                                   err_msg=label)
