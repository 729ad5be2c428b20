"""DPM-Solver (noise form) and DPM-Solver++ (data form) plan constructors.

Checks: order 1 == DDIM; data-form exactness on point-mass data; empirical
convergence orders on the Gaussian mixture of ``convergence.py``; the 3M pitfall
(the published D2 converges at about order 2); parity with an independent numpy
re-implementation of the official DPM-Solver algorithm (per-step loop); AFS;
steps to sigma = 0; gradients in the timesteps; option errors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import logsnr_times, problem

from samplax.models import GaussianMixture, gaussian_flow, point_mass, reference_solve
from samplax.schedules import EDM, VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.dpm_solver import (
    dpm_solver,
    dpm_solver_fast,
    dpm_solver_fast_orders,
    multistep_orders,
)
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.executor import sample
from samplax.solvers.plan import pad_plan

S = VPLinear()


MIX = GaussianMixture.diagonal(
    jnp.array([0.3, 0.7]),
    jnp.array([[1.0, -1.0], [-1.0, 0.5]]),
    jnp.array([[0.2, 0.1], [0.3, 0.4]]),
)
POINT = point_mass(jnp.array([1.0, -2.0, 0.5]))
# Denoisers are built once: the jitted sampler takes them as static arguments, so
# every test reuses the compiled sampler of a plan shape.
DEN = MIX.denoiser(S)
DEN_EDM = MIX.denoiser(EDM())
DEN_POINT = POINT.denoiser(S)
DEN_POINT_EDM = POINT.denoiser(EDM())
TS6 = logsnr_times(S, 6)
X = jax.random.normal(jax.random.key(1), (8, 2))

_run = jax.jit(sample, static_argnums=0)


def _sample(den, plan, x):
    """Jitted executor on plans padded to buffers of 3: one compilation per NFE."""
    return _run(den, pad_plan(plan, 3, 3), x)


def _zero_first(x, t):
    """DEN, except x0_hat = 0 at the first time of TS6 (what AFS assumes)."""
    return jnp.where(t == TS6[0], jnp.zeros_like(x), DEN(x, t))


# --------------------------------------------------------------------------------------
# Order 1 == DDIM; data form exact on point masses
# --------------------------------------------------------------------------------------


def test_order_one_equals_ddim():
    ref = _sample(DEN, ddim(S, TS6), X)
    for plan in [
        dpm_solver(S, TS6, order=1),
        dpm_solver(S, TS6, order=1, method="multistep"),
        dpm_solver_pp(S, TS6, order=1),
        dpm_solver_pp(S, TS6, order=1, method="singlestep"),
    ]:
        assert plan.nfe == 6
        np.testing.assert_allclose(_sample(DEN, plan, X), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        dict(order=3),
        dict(order=3, method="singlestep", solver_type="heun"),
    ],
)
def test_data_form_exact_on_point_mass(kw):
    x = jax.random.normal(jax.random.key(2), (5, 3))
    # VP down to t = 1e-3 against the closed-form flow ...
    ts = jnp.array([1.0, 0.8, 0.5, 0.3, 0.1, 0.03, 1e-3])
    out = _sample(DEN_POINT, dpm_solver_pp(S, ts, **kw), x)
    np.testing.assert_allclose(out, gaussian_flow(POINT, S, x, 1.0, 1e-3), atol=1e-12)
    # ... and EDM all the way to sigma = 0, where the flow lands on the point.
    ts = jnp.array([80.0, 10.0, 2.0, 0.5, 0.1, 0.02, 0.0])
    out = _sample(DEN_POINT_EDM, dpm_solver_pp(EDM(), ts, **kw), 80.0 * x)
    np.testing.assert_allclose(out, jnp.broadcast_to(POINT.means[0], out.shape), atol=1e-12)


# --------------------------------------------------------------------------------------
# Convergence orders (Gaussian mixture, diffrax reference of convergence.py)
# --------------------------------------------------------------------------------------


@functools.cache
def _runner():
    schedule, data, x_T, ref = problem()
    den = data.denoiser(schedule)

    @jax.jit
    def err(plan):
        x = sample(den, plan, x_T)
        return jnp.median(jnp.sqrt(jnp.mean((x - ref) ** 2, -1)))

    return schedule, err


def _order(make, nfes, steps_per_nfe=1):
    """Fitted slope of -log(error) vs log(NFE) (convergence.fitted_order's metric)."""
    schedule, err = _runner()
    e = []
    for n in nfes:
        plan = make(schedule, logsnr_times(schedule, n // steps_per_nfe))
        assert plan.nfe == n
        # These plans use one buffer (noise or data form): giving both the same size
        # is free and lets solvers of one order share a compiled sampler per NFE.
        h = max(plan.evaluate.d.shape[-1], plan.evaluate.e.shape[-1])
        e.append(float(err(pad_plan(plan, h, h))))
    e = np.array(e)
    return float(-np.polyfit(np.log(nfes), np.log(e), 1)[0]), e


# (name, constructor, nominal order, NFE per step, NFEs). Third-order noise-form
# solvers leave their pre-asymptotic regime later (local slopes 3.5 -> 3.1 between
# 48 and 192 NFE), so they are fitted on larger budgets.
N2 = (24, 48, 96)
CONVERGENCE = [
    ("DPM-Solver-2 singlestep", lambda s, t: dpm_solver(s, t, 2), 2, 2, N2),
    ("DPM-Solver-3 singlestep", lambda s, t: dpm_solver(s, t, 3), 3, 3, (48, 96, 192)),
    ("DPM-Solver-2 multistep", lambda s, t: dpm_solver(s, t, 2, method="multistep"), 2, 1, N2),
    ("DPM-Solver-3 multistep", lambda s, t: dpm_solver(s, t, 3, method="multistep"), 3, 1,
     (96, 192)),
    ("DPM-Solver++ 2S", lambda s, t: dpm_solver_pp(s, t, 2, method="singlestep"), 2, 2, N2),
    ("DPM-Solver++ 3S", lambda s, t: dpm_solver_pp(s, t, 3, method="singlestep"), 3, 3,
     (48, 96, 192)),
    ("DPM-Solver++ 2M midpoint", lambda s, t: dpm_solver_pp(s, t, 2), 2, 1, N2),
    ("DPM-Solver++ 2M heun", lambda s, t: dpm_solver_pp(s, t, 2, solver_type="heun"), 2, 1, N2),
    ("DPM-Solver++ 3M", lambda s, t: dpm_solver_pp(s, t, 3), 3, 1, N2),
]


@pytest.mark.parametrize("name,make,order,per,nfes", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_convergence_order(name, make, order, per, nfes):
    fitted, err = _order(make, nfes, per)
    assert abs(fitted - order) < 0.3, (name, fitted, err)


@pytest.mark.parametrize("solver", [dpm_solver_pp, dpm_solver])
def test_published_third_order_is_second_order(solver):
    """The 3M pitfall (REFERENCES.md): the official/diffusers D2 = (D1_0 - D1_1)/(r0 + r1)
    estimates h^2 x0''/2 where its coefficient expects h^2 x0''; the result converges at
    about order 2 (measured ~2.05), while third_order='exact' (default) shows ~3."""
    fitted, err = _order(
        lambda s, t: solver(s, t, 3, method="multistep", third_order="published"), N2
    )
    assert fitted < 2.6, (fitted, err)
    assert fitted > 1.7, (fitted, err)


# --------------------------------------------------------------------------------------
# Parity with the official algorithm, re-implemented in plain numpy (per-step loop)
# --------------------------------------------------------------------------------------


class _NpVP:
    """VP-linear in numpy, as the official NoiseScheduleVP(schedule='linear')."""

    b0, b1 = 0.1, 20.0

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(1.0 - np.exp(2.0 * la))

    def inverse_lambda(self, lam):
        tmp = 2.0 * (self.b1 - self.b0) * np.logaddexp(-2.0 * lam, 0.0)
        return tmp / (np.sqrt(self.b0**2 + tmp) + self.b0) / (self.b1 - self.b0)


def _np_denoiser(w, mu, var, ns):
    """Exact posterior mean of a diagonal Gaussian mixture, in numpy."""

    def D(x, t):
        a, s = ns.alpha(t), ns.sigma(t)
        C = a**2 * var + s**2  # [K, d]
        r = x[:, None, :] - a * mu  # [n, K, d]
        logp = np.log(w) - 0.5 * np.sum(r**2 / C + np.log(C), -1)
        p = np.exp(logp - logp.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.einsum("nk,nkd->nd", p, mu + a * var / C * r)

    return D


class _Official:
    """The official DPM-Solver sampler (LuChengTHU/dpm-solver, dpm_solver_pytorch.py),
    written anew with numpy as the papers write it: one update function per order,
    a Python loop over steps."""

    def __init__(self, D, ns, algorithm, solver_type="dpmsolver", d2_factor=1.0):
        self.D, self.ns, self.pp = D, ns, algorithm == "dpmsolver++"
        self.solver_type, self.d2 = solver_type, d2_factor

    def model(self, x, t):
        x0 = self.D(x, t)
        return x0 if self.pp else (x - self.ns.alpha(t) * x0) / self.ns.sigma(t)

    def _lin(self, s, t):  # exact linear part and model weight sign
        ns = self.ns
        if self.pp:
            return ns.sigma(t) / ns.sigma(s), ns.alpha(t)
        return np.exp(ns.log_alpha(t) - ns.log_alpha(s)), ns.sigma(t)

    def _phis(self, h):
        if self.pp:
            p1 = np.expm1(-h)
            p2 = p1 / h + 1.0
            return p1, p2, p2 / h - 0.5
        p1 = np.expm1(h)
        p2 = p1 / h - 1.0
        return p1, p2, p2 / h - 0.5

    def first(self, x, s, t, m):
        a, w = self._lin(s, t)
        p1, _, _ = self._phis(self.ns.lam(t) - self.ns.lam(s))
        return a * x - w * p1 * m

    def multistep2(self, x, ms, ts, t):
        lam = self.ns.lam
        h, h0 = lam(t) - lam(ts[-1]), lam(ts[-1]) - lam(ts[-2])
        D1_0 = (ms[-1] - ms[-2]) / (h0 / h)
        a, w = self._lin(ts[-1], t)
        p1, p2, _ = self._phis(h)
        sgn = 1.0 if self.pp else -1.0
        if self.solver_type == "dpmsolver":
            return a * x - w * p1 * ms[-1] - 0.5 * w * p1 * D1_0
        return a * x - w * p1 * ms[-1] + sgn * w * p2 * D1_0

    def multistep3(self, x, ms, ts, t):
        lam = self.ns.lam
        h = lam(t) - lam(ts[-1])
        r0 = (lam(ts[-1]) - lam(ts[-2])) / h
        r1 = (lam(ts[-2]) - lam(ts[-3])) / h
        D1_0 = (ms[-1] - ms[-2]) / r0
        D1_1 = (ms[-2] - ms[-3]) / r1
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = self.d2 * (D1_0 - D1_1) / (r0 + r1)
        a, w = self._lin(ts[-1], t)
        p1, p2, p3 = self._phis(h)
        if self.pp:
            return a * x - w * p1 * ms[-1] + w * p2 * D1 - w * p3 * D2
        return a * x - w * p1 * ms[-1] - w * p2 * D1 - w * p3 * D2

    def multistep(self, x, ts, order, lower_order_final=True):
        steps = len(ts) - 1
        ms, tp = [self.model(x, ts[0])], [ts[0]]
        for step in range(1, steps + 1):
            k = min(order, step)
            if lower_order_final and steps < 10:
                k = min(k, steps + 1 - step)
            upd = {1: lambda x, ms, tp, t: self.first(x, tp[-1], t, ms[-1]),
                   2: self.multistep2, 3: self.multistep3}[k]
            x = upd(x, ms, tp, ts[step])
            if step < steps:
                ms.append(self.model(x, ts[step]))
                tp.append(ts[step])
        return x

    def singlestep(self, x, ts, orders):
        ns, sgn = self.ns, (1.0 if self.pp else -1.0)
        for k, s, t in zip(orders, ts[:-1], ts[1:], strict=True):
            m = self.model(x, s)
            if k == 1:
                x = self.first(x, s, t, m)
                continue
            h = ns.lam(t) - ns.lam(s)
            r1 = 0.5 if k == 2 else 1.0 / 3.0
            s1 = ns.inverse_lambda(ns.lam(s) + r1 * h)
            a1, w1 = self._lin(s, s1)
            x1 = a1 * x - w1 * self._phis(r1 * h)[0] * m
            m1 = self.model(x1, s1)
            a, w = self._lin(s, t)
            p1, p2, p3 = self._phis(h)
            if k == 2:
                if self.solver_type == "dpmsolver":
                    x = a * x - w * p1 * m - 0.5 / r1 * w * p1 * (m1 - m)
                else:
                    x = a * x - w * p1 * m + sgn / r1 * w * p2 * (m1 - m)
                continue
            r2 = 2.0 / 3.0
            s2 = ns.inverse_lambda(ns.lam(s) + r2 * h)
            a2, w2 = self._lin(s, s2)
            q1, q2, _ = self._phis(r2 * h)
            q2 = (np.expm1(-r2 * h) / (r2 * h) + 1.0) if self.pp else (q1 / (r2 * h) - 1.0)
            x2 = a2 * x - w2 * q1 * m + sgn * r2 / r1 * w2 * q2 * (m1 - m)
            m2 = self.model(x2, s2)
            if self.solver_type == "dpmsolver":
                x = a * x - w * p1 * m + sgn / r2 * w * p2 * (m2 - m)
            else:
                D1_0, D1_1 = (m1 - m) / r1, (m2 - m) / r2
                D1 = (r2 * D1_0 - r1 * D1_1) / (r2 - r1)
                D2 = 2.0 * (D1_1 - D1_0) / (r2 - r1)
                x = a * x - w * p1 * m + sgn * w * p2 * D1 - w * p3 * D2
        return x


PARITY = [
    # (algorithm, method, order, solver_type, steps, our constructor); 8 multisteps
    # exercise lower_order_final (official: below 10 steps); the rest share NFE 12.
    ("dpmsolver++", "multistep", 2, "dpmsolver", 8, lambda ts: dpm_solver_pp(S, ts, 2)),
    ("dpmsolver++", "multistep", 2, "taylor", 12,
     lambda ts: dpm_solver_pp(S, ts, 2, solver_type="heun")),
    ("dpmsolver++", "multistep", 3, "dpmsolver", 8,
     lambda ts: dpm_solver_pp(S, ts, 3, third_order="published")),
    ("dpmsolver++", "multistep", 3, "dpmsolver", 12,
     lambda ts: dpm_solver_pp(S, ts, 3, third_order="published")),
    ("dpmsolver", "multistep", 3, "dpmsolver", 12,
     lambda ts: dpm_solver(S, ts, 3, method="multistep", third_order="published")),
    ("dpmsolver", "multistep", 2, "taylor", 12,
     lambda ts: dpm_solver(S, ts, 2, method="multistep", solver_type="heun")),
    ("dpmsolver++", "singlestep", 2, "dpmsolver", 6,
     lambda ts: dpm_solver_pp(S, ts, 2, method="singlestep")),
    ("dpmsolver++", "singlestep", 3, "taylor", 4,
     lambda ts: dpm_solver_pp(S, ts, 3, method="singlestep", solver_type="heun")),
    ("dpmsolver", "singlestep", 3, "dpmsolver", 4, lambda ts: dpm_solver(S, ts, 3)),
    ("dpmsolver", "singlestep", 2, "taylor", 6,
     lambda ts: dpm_solver(S, ts, 2, solver_type="heun")),
]


@functools.cache
def _parity_setup():
    w, mu, var = np.array([0.3, 0.7]), np.array([[1.0, -1.0], [-1.0, 0.5]]), np.array(
        [[0.2, 0.1], [0.3, 0.4]]
    )
    ns = _NpVP()
    return ns, _np_denoiser(w, mu, var, ns), np.asarray(X)


def _np_logsnr_times(ns, n, t_T=1.0, t_0=1e-3):
    return ns.inverse_lambda(np.linspace(ns.lam(t_T), ns.lam(t_0), n + 1))


@pytest.mark.parametrize("alg,method,order,stype,steps,make", PARITY)
def test_matches_official_algorithm(alg, method, order, stype, steps, make):
    ns, D, x = _parity_setup()
    ts = _np_logsnr_times(ns, steps)
    off = _Official(D, ns, alg, stype)
    if method == "multistep":
        want = off.multistep(x, ts, order)
    else:
        want = off.singlestep(x, ts, [order] * steps)
    got = _sample(DEN, make(jnp.asarray(ts)), jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_exact_3m_matches_doubled_d2():
    """samplax's default 3M is the official loop with D2 doubled (the fix)."""
    ns, D, x = _parity_setup()
    ts = _np_logsnr_times(ns, 12)
    for alg, make in [("dpmsolver++", dpm_solver_pp),
                      ("dpmsolver", functools.partial(dpm_solver, method="multistep"))]:
        want = _Official(D, ns, alg, d2_factor=2.0).multistep(x, ts, 3)
        got = _sample(DEN, make(S, jnp.asarray(ts), 3), jnp.asarray(x))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nfe", [8, 12])  # splits [3, 3, 2] and [3, 3, 3, 2, 1]
def test_dpm_solver_fast_matches_official(nfe):
    ns, D, x = _parity_setup()
    orders = dpm_solver_fast_orders(nfe, 3)
    assert sum(orders) == nfe and len(orders) == nfe // 3 + 1
    ts = _np_logsnr_times(ns, len(orders))
    want = _Official(D, ns, "dpmsolver").singlestep(x, ts, orders)
    plan = dpm_solver_fast(S, nfe)
    assert plan.nfe == nfe
    got = _sample(DEN, plan, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_fast_orders_split():
    assert dpm_solver_fast_orders(9) == [3, 3, 2, 1]
    assert dpm_solver_fast_orders(10) == [3, 3, 3, 1]
    assert dpm_solver_fast_orders(11) == [3, 3, 3, 2]
    assert dpm_solver_fast_orders(7, 2) == [2, 2, 2, 1]
    assert dpm_solver_fast_orders(4, 1) == [1, 1, 1, 1]


def test_lower_order_final_rules():
    assert multistep_orders(5, 3) == [1, 2, 3, 2, 1]  # official, < 10 steps
    assert multistep_orders(12, 3) == [1, 2] + [3] * 10  # official: not below 10
    assert multistep_orders(12, 3, lower_order_final=15) == [1, 2] + [3] * 8 + [2, 1]  # diffusers
    assert multistep_orders(5, 3, lower_order_final=False) == [1, 2, 3, 3, 3]
    assert multistep_orders(2, 3) == [1, 1] and multistep_orders(2, 3, False) == [1, 2]
    # an explicit orders list reproduces the default plan
    a = _sample(DEN, dpm_solver_pp(S, TS6, 3), X)
    b = _sample(DEN, dpm_solver_pp(S, TS6, orders=[1, 2, 3, 3, 2, 1]), X)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------
# AFS, sigma = 0, gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s, ts, **k: dpm_solver_pp(s, ts, 3, **k),
        lambda s, ts, **k: dpm_solver(s, ts[::3], 3, **k),  # two DPM-Solver-3 steps
    ],
)
def test_afs_replaces_first_evaluation(make):
    """AFS == the same solver whose model returns x0_hat = 0 at the first time; one NFE less."""
    plain, afs = make(S, TS6), make(S, TS6, afs=True)
    assert afs.nfe == plain.nfe - 1
    np.testing.assert_allclose(_sample(DEN, afs, X), _sample(_zero_first, plain, X), atol=1e-12)


def test_fast_afs_keeps_budget():
    plan = dpm_solver_fast(S, 10, afs=True)
    assert plan.nfe == 10  # orders split for 11 evaluations, the first one analytical


def test_no_nan_to_sigma_zero():
    """EDM times ending at t = 0 (sigma = 0, lam = inf): the last step is forced to first
    order (exact there); with traced times the gated coefficients do the same."""
    e = EDM()
    x = 80.0 * X
    ts = jnp.array([80.0, 20.0, 5.0, 1.5, 0.5, 0.1, 0.0])
    outs = []
    for kw in [dict(order=3), dict(order=2, solver_type="heun", afs=True),
               dict(order=3, method="singlestep")]:
        outs.append(_sample(DEN_EDM, dpm_solver_pp(e, ts, **kw), x))
        assert bool(jnp.all(jnp.isfinite(outs[-1]))), kw
    # sane samples: the three 6-step solutions agree to well within the data scale
    assert max(float(jnp.max(jnp.abs(o - outs[0]))) for o in outs) < 0.5

    # Traced times: the last order cannot be lowered statically; the gated
    # coefficients give the same samples and finite derivatives (here w.r.t. every
    # time, the last included: no derivative is taken at sigma = 0).
    def loss(ts, **kw):
        y = _sample(DEN_EDM, dpm_solver_pp(e, ts, **kw), x)
        return jnp.sum(y**2), y

    (_, y), g = jax.value_and_grad(functools.partial(loss, order=3, afs=True), has_aux=True)(ts)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g[1:-1]))) > 0
    np.testing.assert_allclose(y, _sample(DEN_EDM, dpm_solver_pp(e, ts, 3, afs=True), x),
                               atol=1e-12)
    # singlestep, in forward mode through the constructor: the traced plan spends
    # the last step's stage evaluations (NFE 18, not 16) but weights them by 0
    plan, dplan = jax.jvp(lambda t: dpm_solver_pp(e, t, 3, method="singlestep"), (ts,),
                          (jnp.ones_like(ts),))
    assert plan.nfe == 18 and all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(dplan))
    np.testing.assert_allclose(_sample(DEN_EDM, plan, x), outs[2], atol=1e-12)


def test_gradient_wrt_timesteps():
    """jax.grad through constructor + sampler (DPM-Solver-2: stages through t_of_lam;
    DPM-Solver++ 3M with AFS is differentiated in the sigma = 0 test)."""
    ts = logsnr_times(S, 3)

    def loss(interior):
        plan = dpm_solver(S, jnp.concatenate([ts[:1], interior, ts[-1:]]), 2)
        return jnp.sum(_sample(DEN, plan, X) ** 2)

    g = jax.grad(loss)(ts[1:-1])
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
    # directional derivative against a central difference
    v = jnp.linspace(1.0, -1.0, ts.shape[0] - 2) * 1e-6
    fd = (loss(ts[1:-1] + v) - loss(ts[1:-1] - v)) / 2.0
    np.testing.assert_allclose(float(g @ v), float(fd), rtol=1e-5)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_bad_options_raise():
    ts = TS6
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        dpm_solver(S, ts, order=4)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        dpm_solver_pp(S, ts, order=0)
    with pytest.raises(ValueError, match="unknown method"):
        dpm_solver(S, ts, method="adaptive")
    with pytest.raises(ValueError, match="unknown solver_type"):
        dpm_solver_pp(S, ts, solver_type="dpmsolver")
    with pytest.raises(ValueError, match="unknown third_order"):
        dpm_solver_pp(S, ts, 3, third_order="diffusers")
    with pytest.raises(ValueError, match="orders has 2 entries"):
        dpm_solver(S, ts, orders=[2, 2])
    with pytest.raises(ValueError, match="cannot have order 3"):
        dpm_solver_pp(S, ts, orders=[1, 3, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="too small for DPM-Solver-fast"):
        dpm_solver_fast(S, 2, order=3)
    with pytest.raises(ValueError, match="lower_order_final"):
        dpm_solver_pp(S, ts, lower_order_final=-1)
    with pytest.raises(ValueError, match="no network evaluation"):
        dpm_solver_pp(S, jnp.array([1.0, 1e-3]), 1, afs=True)
    with pytest.raises(ValueError, match="strictly decreasing"):
        dpm_solver_pp(S, ts[::-1])


def test_noise_form_to_sigma_zero_takes_the_exact_finite_limit():
    """The noise form's last step to sigma = 0 is ``alpha_t x0_hat`` (the limit of
    ``sigma_t (e^h - 1) eps_hat``): DPM-Solver-1 equals DPM-Solver++1 there, every
    order stays finite and accurate, and the singlestep stage of that step is skipped."""
    e = EDM()
    x = 80.0 * X
    ts = jnp.concatenate([jnp.geomspace(80.0, 0.02, 12), jnp.zeros(1)])
    one = _sample(DEN_EDM, dpm_solver(e, ts, 1), x)
    np.testing.assert_allclose(one, _sample(DEN_EDM, dpm_solver_pp(e, ts, 1), x),
                               rtol=0, atol=1e-12)
    ref = reference_solve(DEN_EDM, e, x, jnp.array([80.0, 0.0]))[-1]
    err_one = float(jnp.max(jnp.abs(one - ref)))
    for plan in (dpm_solver(e, ts, 3, method="multistep"), dpm_solver(e, ts, 2),
                 dpm_solver(e, ts, method="singlestep", orders=[3] * 11 + [1])):
        out = _sample(DEN_EDM, plan, x)
        assert bool(jnp.all(jnp.isfinite(out)))
        assert float(jnp.max(jnp.abs(out - ref))) < err_one
    assert dpm_solver(e, ts, 2).nfe == 2 * 12 - 1
    with pytest.raises(ValueError, match="sigma\\(t_end\\) > 0"):
        dpm_solver_fast(e, 6, t_end=0.0)
