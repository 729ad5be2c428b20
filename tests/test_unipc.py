"""UniPC (Zhao et al. 2023): equivalences, exactness, parity with the official
algorithm, convergence order, gradients, sigma = 0 and option checks.

Plans of equal NFE are stacked and run in one vmapped, jitted call, so the file
compiles the sampler a handful of times only.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import logsnr_times, problem

from samplax.models import gaussian, gaussian_flow, point_mass
from samplax.schedules import NoiseSchedule, VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.executor import sample
from samplax.solvers.plan import stack_plans
from samplax.solvers.unipc import _step_weights, unipc

# sample() vmapped over a stack of plans; the denoiser is static.
_vrun = jax.jit(jax.vmap(sample, in_axes=(None, 0, None)), static_argnums=0)


def run_all(den, plans, x_T):
    return _vrun(den, stack_plans(plans), x_T)


def median_rmse(x, ref):
    return np.asarray(jnp.median(jnp.sqrt(jnp.mean((x - ref) ** 2, -1)), -1))


@functools.cache
def mixture():
    """The convergence problem of tests/convergence.py, with one denoiser object
    (so that jit caches are shared between tests)."""
    s, data, x_T, ref = problem()
    return s, data.denoiser(s), x_T, ref


class EDMZero(NoiseSchedule):
    """alpha = 1, sigma = t on [0, 80]: the last time may be exactly sigma = 0."""

    t_min: float = eqx.field(default=0.0, static=True)
    t_max: float = eqx.field(default=80.0, static=True)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t))

    def log_sigma(self, t):
        return jnp.log(t)

    def t_of_lam(self, lam):
        return jnp.exp(-lam)


def karras_to_zero(n, s_max=80.0, s_min=0.02, rho=7.0):
    """``n`` Karras times from ``s_max`` to ``s_min``, then a final 0 (EDMZero times)."""
    i = jnp.arange(n) / (n - 1)
    ts = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return jnp.concatenate([ts, jnp.zeros(1)])


# --------------------------------------------------------------------------------------
# Equivalences and exactness
# --------------------------------------------------------------------------------------


def test_order1_without_corrector_is_ddim():
    s, den, x_T, _ = mixture()
    ts = logsnr_times(s, 12)
    plans = [ddim(s, ts)] + [
        unipc(s, ts, order=1, corrector=False, predict_x0=px) for px in (True, False)
    ]
    out = run_all(den, plans, x_T)
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[2], out[0], rtol=0, atol=1e-12)


def test_exact_on_point_mass():
    # Point-mass data: x0_hat is constant (data form) and eps_hat is constant along
    # the exact flow (noise form), so every divided difference vanishes.
    s = VPLinear()
    data = point_mass(jnp.array([1.0, -2.0, 0.5]))
    x_T = jax.random.normal(jax.random.key(1), (5, 3))
    ts = jnp.array([1.0, 0.7, 0.45, 0.25, 0.1, 1e-3])
    configs = [
        dict(order=1),
        dict(order=2, variant="bh2"),
        dict(order=3, variant="bh1", lower_order_final=False),
        dict(order=3, variant="vary_coeff", corrector=[True, False, True, True]),
        dict(order=2, predict_x0=False),
        dict(order=3, predict_x0=False, variant="bh2", lower_order_final=False),
    ]
    out = run_all(data.denoiser(s), [unipc(s, ts, **c) for c in configs], x_T)
    exact = gaussian_flow(data, s, x_T, 1.0, 1e-3)
    for c, o in zip(configs, out, strict=True):
        # noise form: eps_hat = (x - alpha D)/sigma loses digits at small sigma
        atol = 1e-12 if c.get("predict_x0", True) else 1e-10
        np.testing.assert_allclose(o, exact, rtol=0, atol=atol, err_msg=str(c))


# --------------------------------------------------------------------------------------
# Parity with the official algorithm (wl-zhao/UniPC, uni_pc.py), re-implemented here
# step by step in plain numpy, independently of the plan machinery
# --------------------------------------------------------------------------------------


def _vp_np(t, b0=0.1, b1=20.0):
    log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    alpha = np.exp(log_alpha)
    sigma = np.sqrt(1.0 - np.exp(2.0 * log_alpha))
    return alpha, sigma, log_alpha - np.log(sigma)


def _official_unipc_np(model_fn, x, ts, order, variant, predict_x0):
    """UniPC.sample(method='multistep', lower_order_final=True) with the bh update,
    following multistep_uni_pc_bh_update line by line (numpy, float64)."""

    def update(x, model_prev, t_prev, t, order, use_corrector):
        a0, s0, lam0 = _vp_np(t_prev[-1])
        a_t, s_t, lam_t = _vp_np(t)
        m0 = model_prev[-1]
        h = lam_t - lam0
        rks, D1s = [], []
        for i in range(1, order):
            lam_i = _vp_np(t_prev[-(i + 1)])[2]
            rk = (lam_i - lam0) / h
            rks.append(rk)
            D1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks = np.array(rks)
        hh = -h if predict_x0 else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        factorial_i = 1
        B_h = hh if variant == "bh1" else np.expm1(hh)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(rks ** (i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i
        R, b = np.stack(R), np.array(b)
        if D1s:
            D1s = np.stack(D1s, axis=0)
            rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            D1s = None
        if use_corrector:
            rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        if predict_x0:
            x_t_ = s_t / s0 * x - a_t * h_phi_1 * m0
            scale = a_t
        else:
            x_t_ = a_t / a0 * x - s_t * h_phi_1 * m0
            scale = s_t
        pred_res = np.einsum("k,k...->...", rhos_p, D1s) if D1s is not None else 0.0
        x_t = x_t_ - scale * B_h * pred_res
        model_t = None
        if use_corrector:
            model_t = model_fn(x_t, t)
            corr_res = np.einsum("k,k...->...", rhos_c[:-1], D1s) if D1s is not None else 0.0
            x_t = x_t_ - scale * B_h * (corr_res + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    steps = len(ts) - 1
    t_prev, model_prev = [ts[0]], [model_fn(x, ts[0])]
    for step in range(1, order):
        x, model_x = update(x, model_prev, t_prev, ts[step], step, True)
        if model_x is None:
            model_x = model_fn(x, ts[step])
        t_prev.append(ts[step])
        model_prev.append(model_x)
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)
        x, model_x = update(x, model_prev, t_prev, ts[step], step_order, step != steps)
        for i in range(order - 1):
            t_prev[i], model_prev[i] = t_prev[i + 1], model_prev[i + 1]
        t_prev[-1] = ts[step]
        if step < steps:
            model_prev[-1] = model_fn(x, ts[step]) if model_x is None else model_x
    return x


def test_matches_official_algorithm():
    s, den, x_T, _ = mixture()
    ts = np.asarray(logsnr_times(s, 9))
    configs = [(2, "bh2", True), (3, "bh1", True), (2, "bh1", False), (3, "bh2", False)]
    plans = [
        unipc(s, jnp.asarray(ts), order=o, variant=v, predict_x0=px) for o, v, px in configs
    ]
    assert all(p.nfe == len(ts) - 1 for p in plans)
    out = run_all(den, plans, x_T)
    for (order, variant, predict_x0), o in zip(configs, out, strict=True):

        def model_fn(x, t, predict_x0=predict_x0):  # the official model_fn
            x0 = np.asarray(den(jnp.asarray(x), t))
            if predict_x0:
                return x0
            alpha, sigma, _ = _vp_np(t)
            return (x - alpha * x0) / sigma

        ref = _official_unipc_np(model_fn, np.asarray(x_T), ts, order, variant, predict_x0)
        np.testing.assert_allclose(o, ref, rtol=0, atol=1e-12, err_msg=str((order, variant)))


# --------------------------------------------------------------------------------------
# Convergence order on the Gaussian mixture (median error against diffrax)
# --------------------------------------------------------------------------------------

# (options, nominal order): UniPC-p shows p without and p + 1 with the corrector.
CONVERGENCE = [
    (dict(order=1), 2.0),
    (dict(order=2, corrector=False), 2.0),
    (dict(order=2), 3.0),
    (dict(order=3), 4.0),
    (dict(order=2, variant="vary_coeff", predict_x0=False), 3.0),
]


def test_convergence_order():
    s, den, x_T, ref = mixture()
    nfes = [20, 40, 80]
    err = []
    for n in nfes:
        ts = logsnr_times(s, n)
        plans = [unipc(s, ts, lower_order_final=False, **c) for c, _ in CONVERGENCE]
        err.append(median_rmse(run_all(den, plans, x_T), ref))
    err = np.stack(err, -1)  # [config, nfe]
    orders = -np.polyfit(np.log(nfes), np.log(err).T, 1)[0]
    report = "\n".join(f"{c}: {o:.2f} (nominal {e})" for (c, e), o in zip(CONVERGENCE, orders))
    for (c, expected), o in zip(CONVERGENCE, orders, strict=True):
        assert abs(o - expected) < 0.3, report


# --------------------------------------------------------------------------------------
# Differentiability, sigma = 0, AFS, per-step corrector, vmap over times
# --------------------------------------------------------------------------------------


def test_gradients_wrt_times():
    s, den, _, _ = mixture()
    x_T = jax.random.normal(jax.random.key(2), (6, 4))
    ts = logsnr_times(s, 3)  # orders 1, 2, 3

    @jax.jit
    @jax.value_and_grad
    def loss(ts):
        plan = unipc(s, ts, order=3, lower_order_final=False)
        return jnp.sum(sample(den, plan, x_T) ** 2)

    g = loss(ts)[1]
    assert np.all(np.isfinite(g)) and np.all(g[1:-1] != 0)
    # directional derivative along the interior times against central differences
    v = jnp.zeros_like(ts).at[1:-1].set(jnp.linspace(1.0, -1.0, ts.shape[0] - 2))
    eps = 1e-6
    fd = (loss(ts + eps * v)[0] - loss(ts - eps * v)[0]) / (2 * eps)
    np.testing.assert_allclose(jnp.dot(g, v), fd, rtol=1e-5)


SIGMA_ZERO = [
    dict(order=1),
    dict(order=2, variant="bh1"),
    dict(order=3, variant="bh2"),
    dict(order=3, variant="vary_coeff"),
    dict(order=2, variant="bh1", predict_x0=False),
    dict(order=3, variant="bh2", predict_x0=False),
]


def test_final_sigma_zero():
    s = EDMZero()
    data = gaussian(jnp.array([0.5, -1.0, 0.0, 2.0]), jnp.array([0.5, 1.0, 2.0, 0.1]))
    den = data.denoiser(s)
    x_T = 80.0 * jax.random.normal(jax.random.key(3), (6, 4))
    ts = karras_to_zero(20)
    configs = [dict(c, lower_order_final=False) for c in SIGMA_ZERO] + [dict(order=3)]
    out = run_all(den, [unipc(s, ts, **c) for c in configs], x_T)
    assert np.all(np.isfinite(out))
    exact = gaussian_flow(data, s, x_T, 80.0, 0.0)  # 20 steps land within ~0.1
    np.testing.assert_array_less(np.max(np.abs(out - exact), axis=(1, 2)), 0.15)


def test_final_sigma_zero_traced():
    # Built from traced times, the last step selects first order with jnp.where:
    # same samples as the concrete build.
    s = EDMZero()
    data = gaussian(jnp.array([0.5, -1.0, 0.0, 2.0]), jnp.array([0.5, 1.0, 2.0, 0.1]))
    den = data.denoiser(s)
    x_T = 80.0 * jax.random.normal(jax.random.key(3), (6, 4))
    ts = karras_to_zero(5)
    configs = [dict(order=3, lower_order_final=False, predict_x0=px) for px in (True, False)]

    def build(ts):
        return stack_plans([unipc(s, ts, **c) for c in configs])

    out = _vrun(den, build(ts), x_T)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(_vrun(den, jax.jit(build)(ts), x_T), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("data_form", [True, False])
def test_step_weights_at_sigma_zero_have_finite_gradients(data_form):
    # The only non-smooth spot of the coefficients: a step to sigma = 0 (lam = inf),
    # where a third-order step falls back to first order through jnp.where.
    s = EDMZero()
    flags = jnp.array([True, True, data_form])

    def f(times):
        pred, corr = _step_weights(s, times[0], jnp.float64(0.0), tuple(times[1:]), flags)
        return jnp.stack(pred)

    times = jnp.array([0.5, 1.5, 4.0])
    w = f(times)
    first = [0.0, 1.0] if data_form else [1.0, -0.5]  # x_t = x0_hat, resp. x_s - sigma_s eps
    np.testing.assert_allclose(w, first + [0.0, 0.0], atol=1e-15)
    assert np.all(np.isfinite(jax.jacrev(f)(times)))


def test_afs_is_a_zero_first_output():
    # AFS == the same solver with a denoiser that returns x0_hat = 0 at t_0, one NFE less.
    s, den, x_T, _ = mixture()
    ts = logsnr_times(s, 6)
    afs = [unipc(s, ts, order=3, afs=True, predict_x0=px) for px in (True, False)]
    assert all(p.nfe == 5 for p in afs)
    full = [unipc(s, ts, order=3, predict_x0=px) for px in (True, False)]
    zero_first = lambda x, t: jnp.where(t == ts[0], 0.0, den(x, t))  # noqa: E731
    np.testing.assert_allclose(
        run_all(den, afs, x_T), run_all(zero_first, full, x_T), rtol=0, atol=1e-12
    )


def test_per_step_corrector():
    s, den, x_T, _ = mixture()
    ts = logsnr_times(s, 6)
    plans = [
        unipc(s, ts, order=2, corrector=False),
        unipc(s, ts, order=2, corrector=[False] * 5),
        unipc(s, ts, order=2, corrector=[False] * 6),
        unipc(s, ts, order=2, corrector=[True, False, True, False, True]),
    ]
    assert all(p.nfe == 6 for p in plans)
    out = run_all(den, plans, x_T)
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])
    assert float(jnp.max(jnp.abs(out[3] - out[0]))) > 1e-6


# --------------------------------------------------------------------------------------
# Bad options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts,match",
    [
        (dict(order=0), "order"),
        (dict(order=2.0), "order"),
        (dict(order=True), "order"),
        (dict(variant="bh3"), "variant"),
        (dict(predict_x0="yes"), "predict_x0"),
        (dict(lower_order_final=None), "lower_order_final"),
        (dict(afs=1), "afs"),
        (dict(corrector=[True]), "one flag per step"),
        (dict(corrector=[True] * 3), "last step"),
        (dict(corrector=[1, 0, 1]), "bools"),
        (dict(corrector="yes"), "corrector"),
    ],
)
def test_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        unipc(VPLinear(), jnp.array([1.0, 0.5, 0.1, 1e-3]), **opts)


def test_bad_times_raise():
    s = VPLinear()
    with pytest.raises(ValueError, match="strictly decreasing"):
        unipc(s, jnp.array([0.1, 0.5, 1.0]))
    with pytest.raises(ValueError, match="at least 2 steps"):
        unipc(s, jnp.array([1.0, 0.5]), afs=True)
