"""Adapters: the exact Gaussian-mixture denoiser, converted to each parameterization
and wrapped back, must come back exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import GaussianMixture
from samplax.models import adapters as A
from samplax.schedules import (
    EDM,
    VE,
    DiscreteVP,
    RectifiedFlow,
    VPCosine,
    VPLinear,
    shifted,
)

DATA = GaussianMixture.diagonal(
    jnp.array([0.3, 0.7]), jnp.array([[1.0, -0.5, 0.2], [-1.0, 0.8, 0.0]]),
    jnp.array([[0.2, 0.3, 0.1], [0.4, 0.1, 0.2]]),
)
X = jax.random.normal(jax.random.key(0), (5, 3))
FRACTIONS = np.array([0.0, 0.3, 0.77, 1.0])  # of the sampling range [t_min, t_max]

SCHEDULES = {
    "vp_linear": VPLinear(),
    "vp_cosine": VPCosine(),
    "ddpm": DiscreteVP.linear(),
    "ve": VE(),
    "edm": EDM(),
    "rf": RectifiedFlow(),
    "rf_shift3": shifted(RectifiedFlow(), 3.0),
    "cosine_shift2": shifted(VPCosine(), 2.0),
}


def _times(s):
    return s.t_min + (s.t_max - s.t_min) * FRACTIONS


# -- the exact network in each parameterization ----------------------------------------
# The fake network lives on the *base* schedule (a shifted schedule's network runs at
# the base time), takes the base time and returns what a trained network would.


def _base(s):
    return s.base if hasattr(s, "base") else s


def _flow_coefficients(base, tau):
    """(alpha, alpha', sigma, sigma') by hand, independently of the adapter's jvp."""
    if isinstance(base, RectifiedFlow):
        return 1 - tau, -1.0, tau, 1.0
    if isinstance(base, EDM):
        return 1.0, 0.0, tau, 1.0
    if isinstance(base, VE):
        s = base.sigma(tau)
        return 1.0, 0.0, s, s * np.log(base.sigma_max / base.sigma_min)
    if isinstance(base, VPLinear):
        a, s = base.alpha(tau), base.sigma(tau)
        da = a * (-0.5 * (base.beta_max - base.beta_min) * tau - 0.5 * base.beta_min)
        return a, da, s, -a * da / s  # VP: alpha alpha' + sigma sigma' = 0
    if isinstance(base, DiscreteVP):  # piecewise-linear log alpha: slope of the segment
        la = jnp.concatenate([jnp.zeros(1), base.log_alphas])
        j = jnp.clip(jnp.floor(tau * base.n), 0, base.n - 1).astype(int)
        a, s = base.alpha(tau), base.sigma(tau)
        da = a * base.n * (la[j + 1] - la[j])
        return a, da, s, -a * da / s
    # VPCosine: alpha = sin((1 - t) k)/sin(k)
    k = 0.5 * np.pi / (1 + base.s)
    a, s = base.alpha(tau), base.sigma(tau)
    da = -k * jnp.cos((1 - tau) * k) / jnp.sin(k)
    return a, da, s, -a * da / s


def _exact(schedule):
    """The exact denoiser, also for per-sample times ``[batch]`` (row by row)."""
    D = DATA.denoiser(schedule)
    return lambda x, t: jax.vmap(D)(x, t) if jnp.ndim(t) else D(x, t)


def network(schedule, kind, decode=lambda tau_in: tau_in):
    """``model(x, t_in)``: the exact prediction of ``kind`` at base time ``decode(t_in)``."""
    base = _base(schedule)
    D = _exact(base)

    def model(x, t_in):
        tau = decode(t_in)
        x0 = D(x, tau)
        col = lambda v: jnp.asarray(v)[..., None] if jnp.ndim(tau) else jnp.asarray(v)
        a, s = col(base.alpha(tau)), col(base.sigma(tau))
        eps = (x - a * x0) / s
        if kind == "epsilon":
            return eps
        if kind == "x0":
            return x0
        if kind == "v":
            return a * eps - s * x0
        if kind == "score":
            return -eps / s
        if kind == "flow":
            _, da, _, ds = (col(v) for v in _flow_coefficients(base, tau))
            return da * x0 + ds * eps
        raise ValueError(kind)

    return model


ADAPTERS = {
    "epsilon": A.from_epsilon,
    "x0": A.from_x0,
    "v": A.from_v,
    "score": A.from_score,
    "flow": A.from_flow,
}


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_exact_round_trip(kind, sched):
    s = SCHEDULES[sched]
    D = ADAPTERS[kind](network(s, kind), s)
    exact = DATA.denoiser(s)
    for t in _times(s):
        np.testing.assert_allclose(D(X, t), exact(X, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched", ["ddpm", "rf_shift3"])
@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_per_sample_times(kind, sched):
    s = SCHEDULES[sched]
    t = jnp.asarray(s.t_min + (s.t_max - s.t_min) * np.linspace(0.05, 0.95, X.shape[0]))
    D = ADAPTERS[kind](network(s, kind), s)
    out = D(X, t)
    assert out.shape == X.shape
    rows = jnp.stack([D(X[i], t[i]) for i in range(X.shape[0])])
    np.testing.assert_allclose(out, rows, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out, _exact(s)(X, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_jit_and_vmap(kind):
    s = SCHEDULES["cosine_shift2"]
    D = ADAPTERS[kind](network(s, kind), s)
    t = jnp.linspace(0.2, 0.8, X.shape[0])
    np.testing.assert_allclose(jax.jit(D)(X, 0.4), D(X, 0.4), rtol=0, atol=1e-13)
    np.testing.assert_allclose(jax.vmap(D)(X, t), D(X, t), rtol=0, atol=1e-13)


# -- closed forms named in the docs ------------------------------------------------------


def test_rectified_flow_velocity_is_eps_minus_x0():
    s = RectifiedFlow()
    u = lambda x, t: 0.3 * x + t  # any network
    D = A.from_flow(u, s)
    for t in (0.0, 0.25, 0.9, 1.0):  # both ends included: exact, no NaN
        np.testing.assert_allclose(D(X, t), X - t * u(X, t), rtol=0, atol=1e-15)
    # EDM: u = d x/d sigma = eps, x0 = x - sigma u
    np.testing.assert_allclose(A.from_flow(u, EDM())(X, 2.0), X - 2.0 * u(X, 2.0), atol=1e-14)


def test_v_on_vp_is_alpha_x_minus_sigma_v():
    s = VPLinear()
    v = lambda x, t: jnp.sin(x) * t
    a, sg = s.alpha(0.4), s.sigma(0.4)
    np.testing.assert_allclose(A.from_v(v, s)(X, 0.4), a * X - sg * v(X, 0.4), atol=1e-15)


def test_zero_terminal_snr_v_prediction():
    # alpha = 0 at t = 1: eps-prediction is undefined there, v-prediction is not
    s = DiscreteVP.scaled_linear().zero_terminal_snr()
    D = A.from_v(network(s, "v"), s)
    out = D(X, 0.9995)
    np.testing.assert_allclose(out, DATA.denoiser(s)(X, 0.9995), atol=1e-12)
    x1 = A.from_v(lambda x, t: -DATA.denoise(x, 0.0, 1.0), s)(X, 1.0)  # v = -x0 at alpha = 0
    np.testing.assert_allclose(x1, DATA.denoise(X, 0.0, 1.0), atol=1e-15)
    assert np.all(np.isfinite(x1))


# -- time inputs -------------------------------------------------------------------------


def test_network_time_values():
    s = DiscreteVP.linear()
    t = jnp.array([0.0125, 0.5, 1.0])
    np.testing.assert_allclose(A.network_time(s, t, "label"), [11.5, 499.0, 999.0], rtol=1e-13)
    st = jnp.exp(-s.lam(t))
    np.testing.assert_allclose(A.network_time(s, t, "sigma"), st, rtol=1e-14)
    np.testing.assert_allclose(A.network_time(s, t, "log_sigma"), jnp.log(st), rtol=1e-13)
    np.testing.assert_allclose(A.network_time(s, t, "c_noise"), jnp.log(st) / 4, rtol=1e-13)
    np.testing.assert_allclose(A.network_time(EDM(), 2.0, "c_noise"), np.log(2.0) / 4, rtol=1e-15)
    np.testing.assert_allclose(A.network_time(s, t, lambda u: 7 * u), 7 * t, rtol=1e-15)
    # shifted rectified flow: the network sees SD3's shifted time
    rf3 = shifted(RectifiedFlow(), 3.0)
    np.testing.assert_allclose(A.network_time(rf3, 0.5, "t"), 1.5 / 2.0, rtol=1e-14)


def _decoder(s, time_input):
    base = _base(s)
    return {
        "label": lambda v: base.t_of_label(v),
        "sigma": lambda v: base.t_of_lam(-jnp.log(v)),
        "log_sigma": lambda v: base.t_of_lam(-v),
        "c_noise": lambda v: base.t_of_lam(-4 * v),
        "callable": lambda v: (v - 1.0) / 1000.0,
    }[time_input]


@pytest.mark.parametrize("time_input, sched", [
    ("label", "ddpm"), ("sigma", "vp_cosine"), ("sigma", "edm"), ("log_sigma", "ve"),
    ("c_noise", "edm"), ("c_noise", "rf_shift3"), ("callable", "rf"),
])
def test_time_inputs_round_trip(time_input, sched):
    s = SCHEDULES[sched]
    ti = (lambda t: 1000.0 * t + 1.0) if time_input == "callable" else time_input
    for kind in ("epsilon", "v"):
        D = ADAPTERS[kind](network(s, kind, _decoder(s, time_input)), s, time_input=ti)
        for t in _times(s)[1:3]:
            np.testing.assert_allclose(D(X, t), DATA.denoiser(s)(X, t), rtol=0, atol=1e-12)


# -- plumbing ----------------------------------------------------------------------------


def test_extra_arguments_are_forwarded():
    s = VPCosine()

    def model(x, t, scale, *, shift=0.0):
        return scale * x + shift

    D = A.from_x0(model, s)
    np.testing.assert_allclose(D(X, 0.5, 2.0, shift=1.0), 2.0 * X + 1.0)
    bound = functools.partial(A.from_epsilon(model, s), scale=0.0)  # D(x, t) for sample()
    np.testing.assert_allclose(bound(X, 0.5), X / s.alpha(0.5), rtol=1e-14)


def test_from_prediction_names():
    s = VPLinear()
    for name, kind in [("epsilon", "epsilon"), ("eps", "epsilon"), ("sample", "x0"),
                       ("x0", "x0"), ("v_prediction", "v"), ("v", "v"), ("flow", "flow"),
                       ("score", "score")]:
        D = A.from_prediction(network(s, kind), s, name)
        np.testing.assert_allclose(D(X, 0.3), DATA.denoiser(s)(X, 0.3), atol=1e-12)
    assert A.from_sample is A.from_x0


def test_dtype_follows_the_sample():
    s = DiscreteVP.linear()  # float64 schedule
    x = X.astype(jnp.float32)
    for kind, f in ADAPTERS.items():
        out = f(lambda x, t: x, s)(x, 0.5)
        assert out.dtype == jnp.float32, kind


def test_float32(float32):
    s = RectifiedFlow()
    x = jnp.ones((2, 3), jnp.float32)
    for f in ADAPTERS.values():
        out = f(lambda x, t: 0.5 * x, s)(x, jnp.float32(0.5))
        assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_bad_options():
    with pytest.raises(ValueError, match="time_input must be one of"):
        A.from_epsilon(lambda x, t: x, VPLinear(), time_input="timestep")
    with pytest.raises(TypeError, match="DiscreteVP"):
        A.from_v(lambda x, t: x, VPLinear(), time_input="label")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        A.from_prediction(lambda x, t: x, VPLinear(), "velocity")
    # label through a shift: allowed, the base is discrete
    A.from_epsilon(lambda x, t: x, shifted(DiscreteVP.linear(), 2.0), time_input="label")
