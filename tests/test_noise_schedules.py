"""Noise schedules: identities, inverses, gradients, endpoints and published values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.schedules import (
    EDM,
    VE,
    DiscreteVP,
    LogSNRShift,
    RectifiedFlow,
    VPCosine,
    VPLinear,
    rescale_zero_terminal_snr,
    shifted,
)

# Factories, so that float32 tests build their schedules in float32.
SCHEDULES = {
    "vp_cosine": VPCosine,
    "ddpm_linear": DiscreteVP.linear,
    "sd_zero_snr": lambda: DiscreteVP.scaled_linear().zero_terminal_snr(),
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
    "rf_shift3": lambda: shifted(RectifiedFlow(), 3.0),
    "cosine_shift2": lambda: shifted(VPCosine(), 2.0),
    "ddpm_shift_half": lambda: shifted(DiscreteVP.linear(), 0.5),
}
VP_NAMES = ["vp_cosine", "ddpm_linear", "sd_zero_snr", "cosine_shift2", "ddpm_shift_half"]
N_FULL = 129
# Fractions of the sampling range [t_min, t_max], off the discrete knots.
INNER = np.array([0.0, 0.0137, 0.21, 0.4567, 0.7071, 0.9313, 1.0])


@functools.partial(jax.jit, static_argnames="grads")
def _profile(s, t, grads=True):
    """Every quantity of ``s`` on ``t`` in one compiled call (eager ops would compile
    one by one, per shape)."""
    lam = s.lam(t)
    out = dict(alpha=s.alpha(t), sigma=s.sigma(t), log_alpha=s.log_alpha(t),
               log_sigma=s.log_sigma(t), lam=lam, back=s.t_of_lam(lam))
    if grads:
        out["dlam_dt"] = jax.vmap(jax.grad(s.lam))(t)
        out["dt_dlam"] = jax.vmap(jax.grad(s.t_of_lam))(lam)
    return out


_CACHE = {}


def profile(name):
    """``(schedule, full grid, inner grid, profile on full, profile on inner)``, cached.

    The full grid spans ``[t_lo, t_hi]``; the inner one ``[t_min, t_max]``.
    """
    key = (name, jax.config.jax_enable_x64)
    if key not in _CACHE:
        s = SCHEDULES[name]()
        full = np.linspace(s.t_lo, s.t_hi, N_FULL)
        inner = s.t_min + (s.t_max - s.t_min) * INNER
        t = jnp.asarray(np.concatenate([full, inner]))
        p = jax.tree.map(np.asarray, _profile(s, t, grads=jax.config.jax_enable_x64))
        pf = {k: v[:N_FULL] for k, v in p.items()}
        pi = {k: v[N_FULL:] for k, v in p.items()}
        _CACHE[key] = (s, full, inner, pf, pi)
    return _CACHE[key]


def _check_endpoints(name, rtol):
    s, full, inner, pf, pi = profile(name)
    # t_lo, t_min, t_max, t_hi
    p = {k: np.array([pf[k][0], pi[k][0], pi[k][-1], pf[k][-1]]) for k in pf}
    ends = np.array([full[0], inner[0], inner[-1], full[-1]])
    for k in ("alpha", "sigma", "log_alpha", "log_sigma", "lam", "back"):
        assert not np.any(np.isnan(p[k])), (k, p[k])
    lam = p["lam"]
    # lam = +inf exactly where sigma = 0, and -inf exactly where alpha = 0
    np.testing.assert_array_equal(np.isposinf(lam), p["sigma"] == 0)
    np.testing.assert_array_equal(np.isneginf(lam), p["alpha"] == 0)
    assert np.all(np.isfinite(lam[1:3])), "sampling ends need a finite lam"
    np.testing.assert_allclose(p["back"], ends, rtol=rtol, atol=rtol * 1e-3)
    # and nothing is NaN anywhere on the defined range
    for k in ("alpha", "sigma", "lam", "back"):
        assert not np.any(np.isnan(pf[k])), k


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_endpoints_float64(name):
    _check_endpoints(name, rtol=1e-12)


@pytest.mark.parametrize("name", ["vp_cosine", "ddpm_linear", "sd_zero_snr", "edm",
                                  "rectified_flow", "rf_shift3"])
def test_endpoints_float32(name, float32):
    assert profile(name)[3]["lam"].dtype == np.float32
    _check_endpoints(name, rtol=2e-3)


@pytest.mark.parametrize("name", VP_NAMES)
def test_variance_preserving(name):
    _, _, _, pf, _ = profile(name)
    np.testing.assert_allclose(pf["alpha"] ** 2 + pf["sigma"] ** 2, 1.0, atol=1e-14)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lam_strictly_decreasing_and_consistent(name):
    _, _, _, pf, _ = profile(name)
    assert not np.any(np.isnan(pf["lam"]))
    assert np.all(np.diff(pf["lam"]) < 0)
    ok = np.isfinite(pf["lam"])
    np.testing.assert_allclose(np.exp(pf["log_alpha"]), pf["alpha"], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(np.exp(pf["log_sigma"]), pf["sigma"], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose((pf["log_alpha"] - pf["log_sigma"])[ok], pf["lam"][ok],
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inverse_round_trip(name):
    s, full, inner, pf, pi = profile(name)
    tol = dict(rtol=1e-12, atol=1e-14 * max(1.0, s.t_hi))
    np.testing.assert_allclose(pf["back"], full, **tol)
    np.testing.assert_allclose(pi["back"], inner, **tol)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inverse_gradient(name):
    _, _, _, _, pi = profile(name)
    dt_dlam = pi["dt_dlam"][1:-1]
    assert np.all(np.isfinite(dt_dlam))
    np.testing.assert_allclose(dt_dlam, 1.0 / pi["dlam_dt"][1:-1], rtol=1e-9)


@pytest.mark.parametrize("name", ["vp_cosine", "ddpm_linear", "ve", "rf_shift3"])
def test_parameter_gradients(name):
    s, _, inner, _, _ = profile(name)
    t = jnp.asarray(inner)
    grads = jax.jit(jax.grad(lambda s: jnp.sum(s.lam(t) + s.t_of_lam(s.lam(t)))))(s)
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name, lam_lo, lam_hi", [
    ("vp_cosine", np.inf, -np.inf),
    ("ddpm_linear", np.inf, None),
    ("sd_zero_snr", np.inf, -np.inf),
    ("edm", np.inf, None),
    ("rectified_flow", np.inf, -np.inf),
    ("rf_shift3", np.inf, -np.inf),
])
def test_ends_where_noise_or_signal_vanish(name, lam_lo, lam_hi):
    s, full, _, pf, _ = profile(name)
    assert pf["lam"][0] == lam_lo and pf["back"][0] == s.t_lo == full[0]
    if lam_hi is None:
        assert np.isfinite(pf["lam"][-1])
    else:
        assert pf["lam"][-1] == lam_hi and pf["back"][-1] == s.t_hi == full[-1]


# -- published values ------------------------------------------------------------------


def test_vp_linear_alpha_at_one():
    # Song et al. 2021: log alpha(1) = -(20 - 0.1)/4 - 0.1/2
    np.testing.assert_allclose(VPLinear().alpha(1.0), np.exp(-5.025), rtol=1e-14)


def test_cosine_matches_dpm_solver_formula():
    s, eps = VPCosine(), 0.008
    t = np.linspace(0.0, 0.9946, 101)
    ref = (np.log(np.cos((t + eps) / (1 + eps) * np.pi / 2))
           - np.log(np.cos(eps / (1 + eps) * np.pi / 2)))
    np.testing.assert_allclose(s.log_alpha(t), ref, rtol=1e-12, atol=1e-15)
    # DPM-Solver's inverse: t = arccos(alpha cos(theta0)) 2(1 + s)/pi - s
    lam = np.linspace(-4.0, 4.0, 9)
    log_a = -0.5 * np.logaddexp(0.0, -2 * lam)
    ref_t = (np.arccos(np.exp(log_a) * np.cos(eps / (1 + eps) * np.pi / 2))
             * 2 * (1 + eps) / np.pi - eps)
    np.testing.assert_allclose(s.t_of_lam(lam), ref_t, rtol=1e-10)
    assert s.t_max == 0.9946


def test_discrete_published_alphas_cumprod():
    ddpm = DiscreteVP.linear()
    assert ddpm.n == 1000
    np.testing.assert_allclose(ddpm.alphas_cumprod[0], 1 - 1e-4, rtol=1e-14)
    np.testing.assert_allclose(ddpm.alphas_cumprod[-1], 4.0358e-5, rtol=1e-4)
    sd = DiscreteVP.scaled_linear()
    np.testing.assert_allclose(sd.alphas_cumprod[-1], 0.0047, rtol=1e-2)
    # Its sigma_tilde range is the 14.6146..0.0292 of k-diffusion and AYS.
    st = np.sqrt((1 - sd.alphas_cumprod) / sd.alphas_cumprod)
    np.testing.assert_allclose([st[-1], st[0]], [14.6146, 0.029167], rtol=1e-4)
    np.testing.assert_allclose(sd.betas, np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2,
                               rtol=1e-10)


def test_squaredcos_matches_continuous_cosine():
    d, c = DiscreteVP.squaredcos_cap_v2(), VPCosine()
    t_n = (np.arange(1000) + 1) / 1000
    # the cap (max_beta = 0.999) only bites on the last level
    np.testing.assert_allclose(d.alphas_cumprod[:-1], c.alpha(t_n[:-1]) ** 2, rtol=1e-10)
    np.testing.assert_allclose(d.betas[-1], 0.999)


def test_discrete_interpolation_and_labels():
    s = DiscreteVP.scaled_linear()
    t_n = (np.arange(1000) + 1) / 1000
    t = np.linspace(1e-3, 1.0, 1000) * 0.9999 + 1e-7  # between the knots
    la_n, la, lab_n, lab = jax.jit(lambda s, a, b: (s.log_alpha(a), s.log_alpha(b),
                                                    s.label(a), s.label(b)))(s, t_n, t)
    np.testing.assert_allclose(la_n, s.log_alphas, rtol=1e-13, atol=1e-16)
    ref = np.interp(t, t_n, np.asarray(s.log_alphas))  # DPM-Solver's interpolate_fn
    np.testing.assert_allclose(la, ref, rtol=1e-12, atol=1e-16)
    # below the first level: towards the clean-data knot (0, 0), not extrapolated
    small = s.log_alpha(jnp.array([0.0, 0.5e-3]))
    assert float(small[0]) == 0.0 and float(s.sigma(0.0)) == 0.0
    np.testing.assert_allclose(small[1], 0.5 * s.log_alphas[0], rtol=1e-13)
    # labels: level n at t_n, and DPM-Solver's (t - 1/N) * 1000 for N = 1000
    np.testing.assert_allclose(lab_n, np.arange(1000), atol=1e-9)
    np.testing.assert_allclose(lab, (t - 1e-3) * 1000, atol=1e-9)
    np.testing.assert_allclose(s.t_of_label(lab), t, rtol=1e-14)
    assert (s.t_min, s.t_max) == (1e-3, 1.0)


def test_discrete_from_alphas_cumprod_and_small_n():
    betas = np.array([0.1, 0.2, 0.3, 0.5])
    a = DiscreteVP(betas)
    b = DiscreteVP(alphas_cumprod=np.cumprod(1 - betas))
    np.testing.assert_allclose(a.log_alphas, b.log_alphas, rtol=1e-14)
    np.testing.assert_allclose(a.betas, betas, rtol=1e-13)
    assert a.t_min == 0.25 and a.label(1.0) == 3


def test_zero_terminal_snr():
    base = DiscreteVP.scaled_linear()
    z = base.zero_terminal_snr()
    ac = np.asarray(z.alphas_cumprod)
    assert ac[-1] == 0.0
    assert ac[0] == float(base.alphas_cumprod[0])
    assert np.all(np.diff(ac) < 0)
    # sqrt(alphas_cumprod) is an affine image of the original (Lin et al. alg. 1)
    sa, sa0 = np.sqrt(ac), np.sqrt(np.asarray(base.alphas_cumprod))
    np.testing.assert_allclose(np.polyfit(sa0, sa, 1, full=True)[1], 0.0, atol=1e-20)
    # lam = -inf only at t = 1; the default start is the last finite-SNR level
    assert z.t_max == 0.999 and z.t_hi == 1.0
    assert float(z.lam(1.0)) == -np.inf and np.isfinite(float(z.lam(0.9999)))
    assert float(z.alpha(1.0)) == 0.0 and float(z.sigma(1.0)) == 1.0
    grad = jax.grad(z.alpha)(1.0)  # finite slope of the linear last segment
    np.testing.assert_allclose(grad, -1000 * np.sqrt(ac[-2]), rtol=1e-12)
    # beta form
    zb = rescale_zero_terminal_snr(base.betas)
    assert float(zb[-1]) == 1.0
    np.testing.assert_allclose(DiscreteVP(zb).alphas_cumprod, ac, rtol=1e-10, atol=1e-300)
    # diffusers' variant: a tiny positive terminal alpha_bar keeps t = 1 usable
    eps = DiscreteVP.scaled_linear().zero_terminal_snr(2.0**-24)
    assert eps.t_max == 1.0 and np.isfinite(float(eps.lam(1.0)))


def test_ve_edm_rf_values():
    ve = VE()
    np.testing.assert_allclose(ve.sigma(jnp.array([0.0, 1.0])), [0.01, 50.0], rtol=1e-14)
    np.testing.assert_allclose(ve.alpha(0.3), 1.0)
    edm = EDM()
    assert (edm.t_min, edm.t_max, edm.sigma_min, edm.sigma_max) == (0.002, 80.0, 0.002, 80.0)
    t = jnp.array([0.0, 0.002, 1.0, 80.0])
    np.testing.assert_array_equal(edm.sigma(t), t)
    np.testing.assert_allclose(jax.vmap(jax.grad(edm.sigma))(t), 1.0)
    rf = RectifiedFlow()
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_array_equal(rf.alpha(t), 1 - t)
    np.testing.assert_allclose(rf.lam(t[1:-1]), np.log((1 - t[1:-1]) / t[1:-1]), rtol=1e-13)
    assert (rf.t_min, rf.t_max) == (1e-3, 0.999)


# -- time shift ------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.5, 3.0, np.exp(1.15)])
def test_shift_is_sd3_time_shift_for_rectified_flow(shift):
    s = shifted(RectifiedFlow(), shift)
    assert isinstance(s, LogSNRShift) and s.base == RectifiedFlow()
    t = np.linspace(0.0, 1.0, 101)
    t_sd3 = shift * t / (1 + (shift - 1) * t)
    np.testing.assert_allclose(s.base_time(t), t_sd3, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(s.sigma(t), t_sd3, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(s.alpha(t), 1 - t_sd3, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, base_name, shift", [
    ("rf_shift3", "rectified_flow", 3.0),
    ("cosine_shift2", "vp_cosine", 2.0),
    ("ddpm_shift_half", "ddpm_linear", 0.5),
])
def test_shift_lowers_logsnr(name, base_name, shift):
    s, full, inner, pf, pi = profile(name)
    b, full_b, inner_b, pf_b, pi_b = profile(base_name)
    assert (s.t_min, s.t_max, s.t_lo, s.t_hi) == (b.t_min, b.t_max, b.t_lo, b.t_hi)
    np.testing.assert_array_equal(full, full_b)
    np.testing.assert_allclose(pf["lam"], pf_b["lam"] - np.log(shift), rtol=1e-13)
    np.testing.assert_allclose(pi["lam"], pi_b["lam"] - np.log(shift), rtol=1e-13)


def test_shift_by_one_is_identity():
    t = jnp.linspace(0.1, 0.9, 7)
    for base in (VPLinear(), EDM()):
        np.testing.assert_allclose(shifted(base, 1.0).alpha(t), base.alpha(t), rtol=1e-12)
        np.testing.assert_allclose(shifted(base, 1.0).sigma(t), base.sigma(t), rtol=1e-12)


def test_shift_gradient_in_shift():
    g = jax.grad(lambda k: shifted(RectifiedFlow(), k).sigma(0.5))(3.0)
    np.testing.assert_allclose(g, 0.5 * 0.5 / (1 + 2 * 0.5) ** 2, rtol=1e-12)


# -- bad input -------------------------------------------------------------------------


def test_bad_input():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        DiscreteVP(np.array([0.1, -0.1, 0.2]))
    with pytest.raises(ValueError, match="only at the last level"):
        DiscreteVP(np.array([0.1, 1.0, 0.2]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVP(alphas_cumprod=np.array([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match="exactly one"):
        DiscreteVP()
    with pytest.raises(ValueError, match="1-D"):
        DiscreteVP(np.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="positive"):
        shifted(RectifiedFlow(), 0.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDM(80.0, 0.002)
