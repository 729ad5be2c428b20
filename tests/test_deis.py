"""DEIS (Zhang & Chen 2023): DDIM equivalence, exactness, parity with the official
tAB / rhoAB definitions, convergence order, gradients, sigma = 0, option checks.

Plans of equal NFE are stacked and run in one vmapped, jitted call.
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import logsnr_times, problem
from scipy.integrate import quad

from samplax.models import gaussian, gaussian_flow, point_mass
from samplax.schedules import NoiseSchedule, VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.deis import _step_weights, deis
from samplax.solvers.executor import sample
from samplax.solvers.plan import stack_plans

_vrun = jax.jit(jax.vmap(sample, in_axes=(None, 0, None)), static_argnums=0)


def run_all(den, plans, x_T):
    return _vrun(den, stack_plans(plans), x_T)


def median_rmse(x, ref):
    return np.asarray(jnp.median(jnp.sqrt(jnp.mean((x - ref) ** 2, -1)), -1))


@functools.cache
def mixture():
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
    i = jnp.arange(n) / (n - 1)
    ts = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return jnp.concatenate([ts, jnp.zeros(1)])


# --------------------------------------------------------------------------------------
# Equivalences and exactness
# --------------------------------------------------------------------------------------


def test_order1_is_ddim():
    s, den, x_T, _ = mixture()
    ts = logsnr_times(s, 12)
    plans = [ddim(s, ts), deis(s, ts, order=1, method="tab"), deis(s, ts, order=1, method="rhoab")]
    out = run_all(den, plans, x_T)
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[2], out[0], rtol=0, atol=1e-12)


def test_exact_on_point_mass():
    # eps_hat is constant along the exact flow of point-mass data and the weights
    # of every step sum to the exact first-order weight.
    s = VPLinear()
    data = point_mass(jnp.array([1.0, -2.0, 0.5]))
    x_T = jax.random.normal(jax.random.key(1), (5, 3))
    ts = jnp.array([1.0, 0.7, 0.45, 0.25, 0.1, 1e-3])
    configs = [(m, k) for m in ("tab", "rhoab") for k in (2, 3, 4)]
    out = run_all(data.denoiser(s), [deis(s, ts, order=k, method=m) for m, k in configs], x_T)
    exact = gaussian_flow(data, s, x_T, 1.0, 1e-3)
    for c, o in zip(configs, out, strict=True):
        np.testing.assert_allclose(o, exact, rtol=0, atol=1e-10, err_msg=str(c))


# --------------------------------------------------------------------------------------
# Parity with the official definitions (qsh-zh/deis, jax_deis/{vpsde,multistep,
# sampler}.py), re-implemented per step in numpy with accurate integrals
# --------------------------------------------------------------------------------------

B0, B1 = 0.1, 20.0


def _abar(t):  # VPSDE.t2alpha_fn: alpha_bar = alpha^2
    return np.exp(2.0 * (-0.25 * t**2 * (B1 - B0) - 0.5 * t * B0))


def _psi(t_start, t_end):  # VPSDE.psi
    return np.sqrt(_abar(t_end) / _abar(t_start))


def _eps_integrand(t):  # VPSDE.eps_integrand: -0.5 dlog(abar)/dt / sqrt(1 - abar)
    return 0.5 * ((B1 - B0) * t + B0) / np.sqrt(1.0 - _abar(t))


def _poly(t, nodes, j):  # multistep.single_poly_coef
    return math.prod((t - n) / (nodes[j] - n) for m, n in enumerate(nodes) if m != j)


def _tab_coefs(t_start, t_end, nodes, riemann=False):
    """C_j = int_{t_start}^{t_end} psi(tau, t_end) eps_integrand(tau) L_j(tau) dtau,
    newest node first; by adaptive quadrature (in u = sqrt(tau), which removes the
    1/sqrt(tau) of eps_integrand at tau = 0), or the official 10k-point sum."""

    def f(tau, j):
        return _psi(tau, t_end) * _eps_integrand(tau) * _poly(tau, nodes, j)

    if riemann:  # get_integrator_basis_fn / get_one_coef_per_step_fn
        tau = np.linspace(t_start, t_end, 10000, endpoint=False)
        return [np.sum(f(tau, j)) * (t_end - t_start) / 10000 for j in range(len(nodes))]
    return [
        quad(lambda u, j: 2 * u * f(u * u, j), np.sqrt(t_start), np.sqrt(t_end), args=(j,),
             epsabs=0, epsrel=1e-13, limit=200)[0]
        for j in range(len(nodes))
    ]


def _rhoab_coefs(rho_start, rho_end, nodes):
    """int_{rho_start}^{rho_end} L_j(rho) drho, exactly (numpy polynomials)."""
    out = []
    for j in range(len(nodes)):
        p = np.poly1d([1.0])
        for m, n in enumerate(nodes):
            if m != j:
                p = p * np.poly1d([1.0, -n]) / (nodes[j] - n)
        P = np.polyint(p)
        out.append(P(rho_end) - P(rho_start))
    return out


def _official_deis_np(eps_fn, x_T, ts, order, method):
    """get_sampler_t_ab / get_sampler_rho_ab with ab_order = order - 1."""
    rhos = np.sqrt((1.0 - _abar(ts)) / _abar(ts))  # VPSDE.t2rho
    v = x_T if method == "tab" else x_T / np.sqrt(_abar(ts[0]))  # x2v
    hist = []
    for i in range(len(ts) - 1):
        x = v if method == "tab" else v * np.sqrt(_abar(ts[i]))  # v2x for the model
        hist.insert(0, eps_fn(x, ts[i]))
        k = min(i + 1, order)
        if method == "tab":
            c = _tab_coefs(ts[i], ts[i + 1], ts[i - k + 1 : i + 1][::-1])
            v = _psi(ts[i], ts[i + 1]) * v + sum(cj * e for cj, e in zip(c, hist))
        else:
            c = _rhoab_coefs(rhos[i], rhos[i + 1], rhos[i - k + 1 : i + 1][::-1])
            v = v + sum(cj * e for cj, e in zip(c, hist))
    return v if method == "tab" else v * np.sqrt(_abar(ts[-1]))


def test_matches_official_definitions():
    s, den, x_T, _ = mixture()
    ts = np.asarray(logsnr_times(s, 8))
    configs = [("tab", 2), ("tab", 3), ("tab", 4), ("rhoab", 3), ("rhoab", 4)]
    out = run_all(den, [deis(s, jnp.asarray(ts), order=k, method=m) for m, k in configs], x_T)

    def eps_fn(x, t):
        alpha, sigma = np.sqrt(_abar(t)), np.sqrt(1.0 - _abar(t))
        return (x - alpha * np.asarray(den(jnp.asarray(x), t))) / sigma

    for (method, order), o in zip(configs, out, strict=True):
        ref = _official_deis_np(eps_fn, np.asarray(x_T), ts, order, method)
        np.testing.assert_allclose(o, ref, rtol=0, atol=1e-11, err_msg=str((method, order)))


def test_tab_weights_against_quadrature_and_official_riemann_sum():
    # samplax's Gauss-Legendre weights agree with adaptive quadrature to ~1e-12;
    # the official 10k-point left Riemann sum is off by ~5e-5 (relative).
    s = VPLinear()
    ts = np.asarray(logsnr_times(s, 8))
    for i, k in [(1, 2), (3, 3), (5, 4), (7, 4)]:
        nodes = ts[i - k + 1 : i + 1][::-1]
        w = _step_weights(s, ts[i], ts[i + 1], tuple(jnp.asarray(nodes[1:])), "tab")
        np.testing.assert_allclose(w[0], _psi(ts[i], ts[i + 1]), rtol=1e-14)
        exact = np.array(_tab_coefs(ts[i], ts[i + 1], nodes))
        np.testing.assert_allclose(np.array(w[1:]), exact, rtol=1e-11, atol=1e-13)
        riemann = np.array(_tab_coefs(ts[i], ts[i + 1], nodes, riemann=True))
        rel = np.max(np.abs(riemann - exact)) / np.max(np.abs(exact))
        assert 1e-5 < rel < 1e-3, rel


# --------------------------------------------------------------------------------------
# Convergence order on the Gaussian mixture (median error against diffrax)
# --------------------------------------------------------------------------------------

# (DEIS-1 is DDIM: see test_order1_is_ddim)
CONVERGENCE = [("tab", 2), ("tab", 3), ("rhoab", 3)]


def test_convergence_order():
    # DEIS leaves the pre-asymptotic regime late on this problem (order 3 fits
    # 2.6 over 20..80 steps), hence the larger step counts.
    s, den, x_T, ref = mixture()
    nfes = [30, 60, 120]
    err = []
    for n in nfes:
        ts = logsnr_times(s, n)
        plans = [deis(s, ts, order=k, method=m) for m, k in CONVERGENCE]
        err.append(median_rmse(run_all(den, plans, x_T), ref))
    err = np.stack(err, -1)  # [config, nfe]
    orders = -np.polyfit(np.log(nfes), np.log(err).T, 1)[0]
    report = "\n".join(f"{c}: {o:.2f}" for c, o in zip(CONVERGENCE, orders))
    for (_, k), o in zip(CONVERGENCE, orders, strict=True):
        assert abs(o - k) < 0.3, report


# --------------------------------------------------------------------------------------
# Differentiability and sigma = 0
# --------------------------------------------------------------------------------------


def test_gradients_wrt_times():
    s, den, _, _ = mixture()
    x_T = jax.random.normal(jax.random.key(2), (6, 4))
    ts = logsnr_times(s, 3)  # orders 1, 2, 3

    @jax.jit
    @jax.value_and_grad
    def loss(ts):
        return jnp.sum(sample(den, deis(s, ts, order=3, method="tab"), x_T) ** 2)

    g = loss(ts)[1]
    assert np.all(np.isfinite(g)) and np.all(g[1:-1] != 0)
    v = jnp.zeros_like(ts).at[1:-1].set(jnp.linspace(1.0, -1.0, ts.shape[0] - 2))
    eps = 1e-6
    fd = (loss(ts + eps * v)[0] - loss(ts - eps * v)[0]) / (2 * eps)
    np.testing.assert_allclose(jnp.dot(g, v), fd, rtol=1e-5)


def test_final_sigma_zero():
    s = EDMZero()
    data = gaussian(jnp.array([0.5, -1.0, 0.0, 2.0]), jnp.array([0.5, 1.0, 2.0, 0.1]))
    den = data.denoiser(s)
    x_T = 80.0 * jax.random.normal(jax.random.key(3), (6, 4))
    ts = karras_to_zero(20)
    configs = [(m, k, False) for m in ("tab", "rhoab") for k in (1, 3)] + [("tab", 3, True)]
    plans = [deis(s, ts, order=k, method=m, lower_order_final=lof) for m, k, lof in configs]
    out = run_all(den, plans, x_T)
    assert np.all(np.isfinite(out))
    exact = gaussian_flow(data, s, x_T, 80.0, 0.0)
    bound = np.array([0.3 if k == 1 else 0.15 for _, k, _ in configs])  # 20 steps
    np.testing.assert_array_less(np.max(np.abs(out - exact), axis=(1, 2)), bound)
    # For alpha = 1, sigma = t, tAB and rhoAB are the same method (t = rho).
    np.testing.assert_allclose(out[:2], out[2:4], rtol=0, atol=1e-10)


def test_tab_step_to_sigma_zero_on_vp():
    # VP-linear down to t = 0 (sigma = 0): the last tAB step integrates in rho, where
    # t(rho) is not a polynomial; compare with adaptive quadrature of the official
    # integrand.
    s = VPLinear()
    ts = np.array([0.3, 0.2, 0.1, 0.0])
    w = _step_weights(s, ts[2], ts[3], (jnp.asarray(ts[1]), jnp.asarray(ts[0])), "tab")
    assert np.all(np.isfinite(np.array(w)))
    np.testing.assert_allclose(np.array(w[1:]), _tab_coefs(ts[2], 0.0, ts[2::-1]), rtol=1e-9)

    # finite derivatives of both methods' weights with respect to the earlier times
    for method in ("tab", "rhoab"):

        def weights(t, method=method):
            return jnp.stack(_step_weights(s, t[0], jnp.float64(0.0), (t[1], t[2]), method))

        assert np.all(np.isfinite(jax.jacrev(weights)(jnp.asarray(ts[2::-1])))), method


# --------------------------------------------------------------------------------------
# Bad options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts,match",
    [
        (dict(order=0), "order"),
        (dict(order=3.0), "order"),
        (dict(method="t_ab"), "method"),
        (dict(method=None), "method"),
        (dict(lower_order_final="no"), "lower_order_final"),
    ],
)
def test_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        deis(VPLinear(), jnp.array([1.0, 0.5, 0.1, 1e-3]), **opts)


def test_bad_times_raise():
    with pytest.raises(ValueError, match="strictly decreasing"):
        deis(VPLinear(), jnp.array([0.1, 0.5, 1.0]))
