"""Guidance transforms on analytic problems whose right answers are known."""

import importlib

import guidance_problems as gp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.guidance import (
    Cost,
    apg,
    branches,
    cads,
    cads_model,
    cfg,
    cfg_pp,
    classifier_guidance,
    cost_of,
    dps,
    dynamic_threshold,
    guidance_interval,
    nfe_report,
    pair,
    recurrent_ddim,
    static_threshold,
    tfg,
    weight_schedule,
)
from samplax.guidance._common import NextStep
from samplax.guidance.cfg import IntervalWeight
from samplax.models import point_mass
from samplax.solvers.ddim import ddim
from samplax.solvers.executor import Segments

S = gp.S
B = branches(gp.model, 1, gp.NULL)


def _x(n=64, seed=0, t=0.5):
    return gp.MIX.prior_sample(jax.random.key(seed), n, S, t)


# --------------------------------------------------------------------------------------
# Exact identities at the denoiser level
# --------------------------------------------------------------------------------------


def test_classifier_guidance_scale_one_is_the_exact_conditional_denoiser():
    cg1 = classifier_guidance(gp.uncond, gp.log_classifier(1), S, 1.0)
    cg25 = classifier_guidance(gp.uncond, gp.log_classifier(1), S, 2.5)

    @jax.jit
    def run(x, ts):
        def one(t):
            xt = x * S.sigma(t) / S.sigma(0.5)
            return cg1(xt, t), gp.cond(1)(xt, t), cfg(B, 2.5)(xt, t), cg25(xt, t)

        return jax.lax.map(one, ts)

    for cg1_, c, cfg25, cg25_ in zip(*run(_x(), jnp.array([0.9, 0.5, 0.1, 0.01]))):
        np.testing.assert_allclose(cg1_, c, atol=1e-10)
        # CFG on exact branches is classifier guidance with the exact classifier, any w
        np.testing.assert_allclose(cfg25, cg25_, atol=1e-10)


def test_cfg_scale_one_is_conditional_and_runs_one_batched_call():
    shapes = []

    def counting(x, t, c):
        shapes.append(x.shape)
        return gp.model(x, t, c)

    @jax.jit
    def run(x):
        return (cfg(branches(counting, 1, gp.NULL), 1.0)(x, 0.5), gp.cond(1)(x, 0.5),
                cfg(pair(gp.cond(1), gp.uncond), 3.0)(x, 0.5), cfg(B, 3.0)(x, 0.5))

    out, c, two_calls, batched = run(_x(n=8))
    assert shapes == [(16, 2)]  # cond and uncond concatenated along the batch
    np.testing.assert_allclose(out, c, atol=1e-12)
    # two separate denoisers give the same result at twice the calls
    np.testing.assert_allclose(two_calls, batched, atol=1e-12)


def test_cfg_rescale():
    t = 0.3
    a, s = S.alpha(t), S.sigma(t)

    @jax.jit
    def run(x):
        conv = {"x0": lambda d: d, "eps": lambda d: (x - a * d) / s,
                "v": lambda d: a * (x - a * d) / s - s * d}
        dc, plain = gp.cond(1)(x, t), cfg(B, 4.0)(x, t)
        res = {}
        for space, f in conv.items():
            full = cfg(B, 4.0, rescale=1.0, rescale_space=space, schedule=S)(x, t)
            half = cfg(B, 4.0, rescale=0.5, rescale_space=space, schedule=S)(x, t)
            res[space] = (f(dc), f(full), f(half), f(plain))
        return res, cfg(B, 4.0, rescale=0.0)(x, t), plain

    res, off, plain = run(_x())
    np.testing.assert_allclose(off, plain, atol=0)
    for cc, full, half, pl in res.values():
        # phi = 1: the guided prediction has the conditional one's per-sample std
        np.testing.assert_allclose(jnp.std(full, -1), jnp.std(cc, -1), rtol=1e-10)
        np.testing.assert_allclose(half, 0.5 * full + 0.5 * pl, atol=1e-10)
    with pytest.raises(ValueError, match="schedule"):
        cfg(B, 4.0, rescale=0.7)


def test_weight_schedules():
    t = jnp.linspace(0.0, 1.0, 20001)
    for kind in ("linear", "cosine"):
        w = weight_schedule(kind, 4.0)
        vals = w(t)
        assert abs(float(jnp.mean(vals)) - 4.0) < 1e-3  # same mean as constant
        assert float(vals[0]) > 4.0 > float(vals[-1])  # grows as noise falls
        assert float(w(1.0)) == pytest.approx(1.0)
    assert weight_schedule("constant", 4.0) == 4.0
    iw = IntervalWeight(3.0, S, 0.5, 5.0)
    sig = lambda tt: float(jnp.exp(-S.lam(tt)))  # noqa: E731
    assert sig(0.5) < 5.0 and sig(0.5) > 0.5 and float(iw(0.5)) == 3.0
    assert sig(0.9) > 5.0 and float(iw(0.9)) == 1.0


def test_apg_special_cases():
    t, r = 0.4, 0.05

    @jax.jit
    def run(x):
        dc, _ = B(x, t)
        return (apg(B, 5.0, eta=1.0, momentum=0.0)(x, t), cfg(B, 5.0)(x, t), dc,
                apg(B, 5.0, eta=0.0, momentum=0.0)(x, t),
                apg(B, 5.0, eta=1.0, momentum=0.0, norm_threshold=r)(x, t))

    plain, ref, dc, orth, clipped = run(_x())
    # eta = 1, no momentum, no clipping: plain CFG
    np.testing.assert_allclose(plain, ref, atol=1e-12)
    # eta = 0: the update is orthogonal to the conditional prediction, per sample
    np.testing.assert_allclose(jnp.sum((orth - dc) * dc, -1), 0.0, atol=1e-12)
    # norm clip: ||update|| <= (w - 1) r
    assert float(jnp.max(jnp.linalg.norm(clipped - dc, axis=-1))) <= 4.0 * r * (1 + 1e-12)
    x = _x()
    # eps space needs the schedule; stateful APG refuses to be called plainly
    with pytest.raises(ValueError, match="schedule"):
        apg(B, 5.0, space="eps")
    with pytest.raises(ValueError, match="stateful"):
        apg(B, 5.0, momentum=-0.5)(x, t)


def test_thresholding_stays_in_bounds():
    big = lambda x, t: 3.0 * x  # noqa: E731 - predictions far outside [-1, 1]
    small = lambda x, t: 0.1 * jnp.tanh(x)  # noqa: E731 - already inside: untouched
    x = jax.random.normal(jax.random.key(0), (32, 5, 4))
    settings = ((0.995, float("inf")), (0.9, 1.5), (1.0, float("inf")))

    @jax.jit
    def run(x):
        dyn = [dynamic_threshold(big, p, cap)(x, 0.5) for p, cap in settings]
        return static_threshold(big, -0.5, 0.8)(x, 0.5), dyn, dynamic_threshold(small)(x, 0.5)

    out, dyn, untouched = run(x)
    assert float(out.min()) >= -0.5 and float(out.max()) <= 0.8
    for (p, cap), out in zip(settings, dyn):
        assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-12
        q = np.quantile(np.abs(3.0 * np.asarray(x)).reshape(32, -1), p, axis=-1)
        s = np.clip(q, 1.0, cap)[:, None, None]
        np.testing.assert_allclose(out, np.clip(3.0 * x, -s, s) / s, atol=1e-12)
    np.testing.assert_allclose(untouched, small(x, 0.5), atol=0)
    with pytest.raises(ValueError):
        static_threshold(big, 1.0, -1.0)


def test_cads_condition_annealing():
    key = jax.random.key(3)
    an = cads(key, psi=0.0)
    np.testing.assert_allclose(an.gamma(jnp.array([0.0, 0.6, 0.75, 0.9, 1.0])),
                               [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)
    c = jax.random.normal(jax.random.key(1), (4000, 8)) + 2.0
    e1 = jnp.array([[0.0, 3.0]])
    bb = branches(gp.emb_model, e1, jnp.zeros((1, 2)), anneal=cads(key))

    @jax.jit
    def run(c, x):
        return dict(early=an(c, 0.3), pure=an(c, 0.95), other=an(c, 0.92),
                    mid=cads(key, psi=1.0)(c, 0.8), branches=bb(x, 0.95),
                    uncond=gp.uncond(x, 0.95), plain=gp.emb_model(x, 0.95, e1 + 0 * x),
                    wrapped=cads_model(gp.emb_model, cads(key))(x, 0.95, e1 + 0 * x))

    r = run(c, _x(8))
    np.testing.assert_allclose(r["early"], c, atol=1e-12)  # tau <= tau1: untouched
    pure = r["pure"]  # tau >= tau2: only noise, std s
    assert abs(float(jnp.std(pure)) - 0.25) < 0.01 and abs(float(jnp.mean(pure))) < 0.01
    assert not np.allclose(r["pure"], r["other"])  # fresh noise at every time
    mid = r["mid"]  # rescale: per-sample mean and std restored
    np.testing.assert_allclose(jnp.mean(mid, -1), jnp.mean(c, -1), atol=1e-10)
    np.testing.assert_allclose(jnp.std(mid, -1), jnp.std(c, -1), rtol=1e-10)
    assert not np.allclose(mid, c)
    # on the conditional branch only, by default
    dc, du = r["branches"]
    np.testing.assert_allclose(du, r["uncond"], atol=1e-12)
    np.testing.assert_allclose(r["wrapped"], dc, atol=1e-12)
    assert not np.allclose(dc, r["plain"])
    with pytest.raises(TypeError, match="continuous"):
        cads(key)(jnp.array([1, 2]), 0.95)


def test_cost_accounting():
    assert Cost(1) + Cost(1, 1) == Cost(2, 1) and 3 * Cost(1, 1) == Cost(3, 3)
    assert cost_of(gp.uncond) == Cost(1, 0)
    assert cost_of(cfg(B, 3.0)) == Cost(2, 0)
    assert cost_of(dynamic_threshold(cfg(B, 3.0))) == Cost(2, 0)
    assert cost_of(cfg(pair(gp.cond(1), cfg(B, 2.0)), 2.0)) == Cost(3, 0)
    assert cost_of(B.conditional()) == Cost(1, 0)
    assert cost_of(classifier_guidance(gp.uncond, gp.log_classifier(1), S)) == Cost(2, 1)
    assert cost_of(classifier_guidance(gp.uncond, gp.log_classifier(1), S,
                                       classifier_cost=Cost(0, 0))) == Cost(1, 0)
    op = lambda x: x[:, :1]  # noqa: E731
    assert cost_of(dps(gp.uncond, S, op, jnp.zeros(1), noise_std=0.1)) == Cost(1, 1)
    assert cost_of(dps(cfg(B, 2.0), S, op, jnp.zeros(1), noise_std=0.1)) == Cost(2, 2)
    ts = jnp.linspace(1.0, 1e-3, 5)
    log_f = lambda x0: -jnp.sum(x0**2, -1)  # noqa: E731
    assert cost_of(tfg(gp.uncond, log_f, S, ts, rho=0.1)) == Cost(1, 1)
    assert cost_of(tfg(gp.uncond, log_f, S, ts, mu=0.1)) == Cost(1, 0)
    plan = ddim(S, ts)
    rep = nfe_report(plan, cfg(B, 3.0))
    assert (rep.slots, rep.nfe, rep.backward) == (4, 8, 0)
    rep = nfe_report(recurrent_ddim(S, ts, n_recur=3), tfg(gp.uncond, log_f, S, ts, rho=0.1))
    assert (rep.slots, rep.forward, rep.backward, rep.passes(2.0)) == (12, 12, 12, 36)
    rep = nfe_report(plan, Segments((cfg(B, 2.0), gp.uncond), (0, 3)))
    assert (rep.nfe, len(rep.segments)) == (7, 2)


# --------------------------------------------------------------------------------------
# Sampling: the class probability under CFG, classifier guidance, interval, CFG++, APG
# --------------------------------------------------------------------------------------


def test_cfg_moves_class_probability_by_the_predicted_amount():
    """E[p(y=1 | x0)] over samples: w = 0 gives the prior share pi_1 (law of total
    probability), w = 1 gives E_{p(x|y)} p(y | x) (exact draws), w = 2 the value of
    the same guided flow solved by an independent RK4 integrator. Classifier
    guidance with the exact classifier reproduces the conditional sampler."""
    n = 1000
    x_T = gp.MIX.prior_sample(jax.random.key(0), n, S)
    ts = jnp.linspace(1.0, 1e-3, 101)
    plan = ddim(S, ts)

    cg = classifier_guidance(gp.uncond, gp.log_classifier(1), S, 1.0)
    run = jax.jit(lambda x, w: sample(cfg(B, w), plan, x))  # w = 1: the conditional sampler
    p, outs = {}, {}
    for w in (0.0, 1.0, 2.0):
        outs[w] = run(x_T, w)
        p[w] = float(jnp.mean(gp.class_prob(outs[w])))
    # classifier guidance (w = 1, exact classifier) samples the conditional model
    np.testing.assert_allclose(jax.jit(lambda x: sample(cg, plan, x))(x_T), outs[1.0], atol=1e-8)
    exact_w1 = float(jnp.mean(gp.class_prob(gp.COMP[1].sample(jax.random.key(9), 200_000))))
    ref_w2 = float(jnp.mean(gp.class_prob(
        jax.jit(lambda x: gp.rk4_flow(cfg(B, 2.0), x, 1.0, 1e-3, 200))(x_T))))
    print(f"class prob: w=0 {p[0.0]:.4f} (pi {float(gp.PI[1]):.4f}), "
          f"w=1 {p[1.0]:.4f} (exact {exact_w1:.4f}), w=2 {p[2.0]:.4f} (RK4 {ref_w2:.4f})")
    assert abs(p[0.0] - float(gp.PI[1])) < 0.03
    assert abs(p[1.0] - exact_w1) < 0.02
    assert abs(p[2.0] - ref_w2) < 0.005
    assert p[2.0] - p[1.0] > 0.1 and p[1.0] - p[0.0] > 0.2


def test_guidance_interval_skips_exactly_the_unconditional_evaluations():
    ts = jnp.linspace(1.0, 1e-3, 21)
    plan = ddim(S, ts)
    lo, hi = 0.5, 5.0
    shapes = []

    def counting(x, t, c):
        shapes.append(x.shape[0])
        return gp.model(x, t, c)

    b = branches(counting, 1, gp.NULL)
    seg = guidance_interval(plan, cfg(b, 3.0), b.conditional(), lo, hi)
    sig = np.asarray(plan.sigma / plan.alpha)
    inside = (sig > lo) & (sig <= hi)
    assert 0 < inside.sum() < plan.nfe and isinstance(seg, Segments)
    assert nfe_report(plan, seg).nfe == plan.nfe + inside.sum()  # 2 inside, 1 outside
    masked = cfg(b, IntervalWeight(3.0, S, lo, hi))
    assert nfe_report(plan, masked).nfe == 2 * plan.nfe  # masking saves nothing
    x = _x(16, t=1.0)
    out_seg = jax.jit(lambda x: sample(seg, plan, x))(x)
    assert shapes == [16, 32, 16]  # the unconditional branch is absent outside
    np.testing.assert_allclose(out_seg, jax.jit(lambda x: sample(masked, plan, x))(x),
                               atol=1e-12)
    with pytest.raises(ValueError):
        guidance_interval(plan, cfg(b, 3.0), b.conditional(), 5.0, 0.5)


def test_cfg_pp_is_algorithm_1_with_ddim():
    ts = jnp.linspace(1.0, 1e-3, 9)
    plan = ddim(S, ts)

    @jax.jit
    def run(x, lam):
        def step(y, st):  # CFG++ DDIM, Chung et al. 2024, Algorithm 1
            s, t = st
            dc, du = B(y, s)
            eps_u = (y - S.alpha(s) * du) / S.sigma(s)
            return S.alpha(t) * (du + lam * (dc - du)) + S.sigma(t) * eps_u, None

        y, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:]))
        return sample(cfg_pp(B, lam, S, ts), plan, x), y

    x = gp.MIX.prior_sample(jax.random.key(2), 32, S)
    for lam in (0.0, 0.6):
        out, y = run(x, lam)
        np.testing.assert_allclose(out, y, atol=1e-10)
    np.testing.assert_allclose(run(x, 0.0)[0], jax.jit(lambda x: sample(gp.uncond, plan, x))(x),
                               atol=1e-12)  # lam = 0: the unconditional sampler
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cfg_pp(B, 1.5, S, ts)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_next_step_converts_state_changes_exactly(eta):
    """A change d of x0_hat moves the DDIM(eta) state by alpha_t g d (same noise)."""
    ts = jnp.array([0.8, 0.5])
    a_next, gain = NextStep(S, ts, eta)(ts[0])
    plan = recurrent_ddim(S, ts, eta=eta)
    x, key, dvec = _x(8, t=0.8), jax.random.key(4), jnp.array([0.3, -0.2])
    moved = jax.jit(lambda x: sample(lambda x, t: gp.uncond(x, t) + dvec, plan, x, key)
                    - sample(gp.uncond, plan, x, key))(x)
    np.testing.assert_allclose(moved, jnp.broadcast_to(a_next * gain * dvec, moved.shape),
                               atol=1e-12)


def test_apg_momentum_matches_a_python_loop():
    ts = jnp.linspace(1.0, 1e-3, 9)
    plan = ddim(S, ts)
    w, r = 4.0, 0.3

    def run(x, beta):
        def step(carry, st):
            y, m = carry
            s, t = st
            dc, du = B(y, s)
            m = (dc - du) + beta * m
            diff = m * jnp.minimum(1.0, r / jnp.linalg.norm(m, axis=-1, keepdims=True))
            unit = dc / jnp.linalg.norm(dc, axis=-1, keepdims=True)
            orth = diff - jnp.sum(diff * unit, -1, keepdims=True) * unit
            x0 = dc + (w - 1.0) * orth
            return (S.alpha(t) * x0 + S.sigma(t) * (y - S.alpha(s) * x0) / S.sigma(s), m), None

        (y, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), (ts[:-1], ts[1:]))
        return y, sample(apg(B, w, momentum=beta, norm_threshold=r), plan, x)

    x = gp.MIX.prior_sample(jax.random.key(2), 32, S)
    y, out = jax.jit(run, static_argnums=1)(x, -0.5)
    np.testing.assert_allclose(out, y, atol=1e-10)
    assert not np.allclose(jax.jit(run, static_argnums=1)(x, 0.0)[1], y)  # momentum matters


# --------------------------------------------------------------------------------------
# Gradient guidance: DPS and TFG on a linear inverse problem with a Gaussian prior
# --------------------------------------------------------------------------------------


def test_dps_reduces_error_to_the_true_posterior_mean():
    ip = gp.inverse_problem()
    D = ip["prior"].denoiser(S)
    op = lambda x: x @ ip["A"].T  # noqa: E731
    ts = jnp.linspace(1.0, 1e-3, 101)
    plan = ddim(S, ts)
    x_T = ip["prior"].prior_sample(jax.random.key(0), 500, S)
    dens = {
        "none": D,
        "dps (noise_std)": dps(D, S, op, ip["y"], noise_std=ip["noise"]),
        "dps (zeta=0.2)": dps(D, S, op, ip["y"], zeta=0.2, timesteps=ts),
    }
    outs = jax.jit(lambda x: {k: sample(d, plan, x) for k, d in dens.items()})(x_T)
    m = ip["post_mean"]
    err = {k: float(jnp.linalg.norm(o.mean(0) - m)) for k, o in outs.items()}
    mse = {k: float(jnp.mean(jnp.sum((o - m) ** 2, -1))) for k, o in outs.items()}
    print("error of the sample mean to the posterior mean:", err)
    print("mean squared distance to the posterior mean:", mse,
          "(exact posterior samples:", float(jnp.trace(ip["post_cov"])), ")")
    for k in dens:
        if k != "none":
            assert err[k] < 0.6 * err["none"], (k, err)
            assert mse[k] < 0.5 * mse["none"], (k, mse)


def test_tfg_settings():
    ip = gp.inverse_problem()
    D = ip["prior"].denoiser(S)
    op = lambda x: x @ ip["A"].T  # noqa: E731
    ts = jnp.linspace(1.0, 1e-3, 11)
    x, t = ip["prior"].prior_sample(jax.random.key(0), 16, S, 0.6), ts[4]
    norm = lambda x0: -jnp.linalg.norm(op(x0) - ip["y"], axis=-1)  # noqa: E731
    lin = lambda x0: x0 @ jnp.arange(1.0, 5.0)  # noqa: E731
    quad = lambda x0: -jnp.sum(x0**2, -1)  # noqa: E731
    step, zeta, key = NextStep(S, ts), 0.3, jax.random.key(5)

    @jax.jit
    def run(x):
        return dict(
            off=tfg(D, norm, S, ts)(x, t), den=D(x, t),
            # DPS is TFG with mu = gamma = 0 and rho = zeta alpha_s/alpha_t
            as_tfg=tfg(D, norm, S, ts, rho=lambda s: zeta * S.alpha(s) / step(s)[0])(x, t),
            dps=dps(D, S, op, ip["y"], zeta=zeta, timesteps=ts)(x, t),
            lin_smooth=tfg(D, lin, S, ts, rho=0.2, mu=0.1, gamma=0.5, n_mc=4, key=key)(x, t),
            lin=tfg(D, lin, S, ts, rho=0.2, mu=0.1)(x, t),
            quad_smooth=tfg(D, quad, S, ts, mu=0.1, gamma=0.5, n_mc=4, key=key)(x, t),
            quad=tfg(D, quad, S, ts, mu=0.1)(x, t))

    r = run(x)
    np.testing.assert_allclose(r["off"], r["den"], atol=0)  # rho = mu = 0: the denoiser
    np.testing.assert_allclose(r["as_tfg"], r["dps"], atol=1e-12)
    # implicit dynamics leave the gradient of a linear log f unchanged, not a quadratic's
    np.testing.assert_allclose(r["lin_smooth"], r["lin"], atol=1e-10)
    assert not np.allclose(r["quad_smooth"], r["quad"])
    with pytest.raises(ValueError, match="key"):
        tfg(D, quad, S, ts, gamma=0.5)


def test_recurrent_ddim():
    ts = jnp.linspace(1.0, 1e-3, 11)
    plain, ref = recurrent_ddim(S, ts), ddim(S, ts)
    assert not plain.stochastic and plain.nfe == 10
    np.testing.assert_allclose(plain.update.x, ref.update.x, rtol=1e-12)
    np.testing.assert_allclose(plain.update.d, ref.update.d, rtol=1e-12, atol=1e-15)
    rec = recurrent_ddim(S, jnp.linspace(1.0, 0.3, 6), eta=1.0, n_recur=2)
    assert rec.stochastic and rec.nfe == 10
    # point-mass data: every DDIM(eta) step and every renoising is exact, so the final
    # state is distributed as x_t = alpha_t x0 + sigma_t eps
    data = point_mass(jnp.array([1.5]))
    x_T = data.prior_sample(jax.random.key(1), 8000, S)
    out = jax.jit(lambda x: sample(data.denoiser(S), rec, x, jax.random.key(2)))(x_T)
    assert abs(float(jnp.mean(out)) - 1.5 * float(S.alpha(0.3))) < 0.03
    assert abs(float(jnp.std(out)) / float(S.sigma(0.3)) - 1.0) < 0.03
    with pytest.raises(ValueError):
        recurrent_ddim(S, ts, n_recur=0)


# --------------------------------------------------------------------------------------
# Composition with every solver under jit
# --------------------------------------------------------------------------------------

SOLVERS = [
    ("edm", "euler"),
    ("edm", "heun"),
    ("dpm_solver", "dpm_solver"),
    ("dpm_solver_pp", "dpm_solver_pp"),
    ("unipc", "unipc"),
    ("deis", "deis"),
    ("pndm", "ipndm"),
]


def _solver(module, name):
    try:
        mod = importlib.import_module(f"samplax.solvers.{module}")
    except ImportError:
        pytest.skip(f"samplax.solvers.{module} is not there yet")
    if not hasattr(mod, name):
        pytest.skip(f"samplax.solvers.{module}.{name} is not there yet")
    return getattr(mod, name)


def _all_transforms(plan, ts):
    key = jax.random.key(0)
    e = branches(gp.emb_model, jnp.array([[0.0, 3.0]]), jnp.zeros((1, 2)), anneal=cads(key))
    op = lambda x: x[:, :1]  # noqa: E731
    return {
        "cfg": cfg(B, 3.0),
        "cfg-rescale-cosine": cfg(B, weight_schedule("cosine", 3.0), rescale=0.7, schedule=S),
        "cfg++": cfg_pp(B, 0.5, S, ts),
        "apg-momentum": apg(B, 4.0, momentum=-0.5, norm_threshold=1.0),
        "interval": guidance_interval(plan, cfg(B, 3.0), B.conditional(), 0.5, 5.0),
        "classifier": classifier_guidance(gp.uncond, gp.log_classifier(1), S, 2.0),
        "threshold": dynamic_threshold(static_threshold(cfg(B, 3.0), -3.0, 3.0), 0.9, 2.0),
        "dps": dps(gp.uncond, S, op, jnp.ones(1), noise_std=0.3),
        "tfg": tfg(gp.uncond, lambda x0: -jnp.sum((x0 - 1.0) ** 2, -1), S, ts,
                   rho=0.05, mu=0.05, gamma=0.1, n_mc=2, key=key),
        "cads-cfg": cfg(e, 3.0),
    }


def _run_all(plan, dens):
    x = gp.MIX.prior_sample(jax.random.key(1), 8, S)
    outs = jax.jit(lambda x: {k: sample(d, plan, x) for k, d in dens.items()})(x)
    for k, out in outs.items():
        assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out))), k
        assert nfe_report(plan, dens[k]).nfe >= plan.nfe
    return x, outs


def test_every_transform_composes_with_ddim_under_jit():
    """(cfg, cfg++, apg, interval, classifier, dps are sampled with ddim in other tests.)"""
    ts = jnp.linspace(1.0, 1e-3, 7)
    plan = ddim(S, ts)
    keep = ("cfg-rescale-cosine", "threshold", "tfg", "cads-cfg")
    _run_all(plan, {k: d for k, d in _all_transforms(plan, ts).items() if k in keep})


@pytest.mark.parametrize("module,name", SOLVERS)
def test_guidance_composes_with_every_solver_under_jit(module, name):
    """The executor-level features on every solver: Segments (an interval) whose guided
    range runs a stateful denoiser (APG with momentum)."""
    ts = jnp.linspace(1.0, 1e-3, 7)
    plan = _solver(module, name)(S, ts)
    den = guidance_interval(plan, apg(B, 4.0, momentum=-0.5), B.conditional(), 0.0, 5.0)
    assert len(den.starts) == 2
    _run_all(plan, {"interval-apg": den})


@pytest.mark.slow
@pytest.mark.parametrize("module,name", SOLVERS)
def test_every_transform_composes_with_every_solver_under_jit(module, name):
    ts = jnp.linspace(1.0, 1e-3, 7)
    plan = _solver(module, name)(S, ts)
    _run_all(plan, _all_transforms(plan, ts))
