"""Step schedules: shape, ends, monotonicity, published formulas and tables, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.schedules import (
    EDM,
    VE,
    DiscreteVP,
    RectifiedFlow,
    VPCosine,
    VPLinear,
    shifted,
    steps,
)
from samplax.solvers._common import check_timesteps

N = 10  # one step count for most tests: every array keeps the same shape

SCHEDULES = {
    "vp_linear": VPLinear(),
    "vp_cosine": VPCosine(),
    "ddpm": DiscreteVP.linear(),
    "ve": VE(),
    "edm": EDM(),
    "rf": RectifiedFlow(),
    "rf_shift3": shifted(RectifiedFlow(), 3.0),
}
ZERO_REACHING = ["vp_cosine", "ddpm", "edm", "rf", "rf_shift3"]

SPACINGS = {
    "uniform_time": steps.uniform_time,
    "time_quadratic": steps.time_quadratic,
    "uniform_logsnr": steps.uniform_logsnr,
    "exponential": steps.exponential,
    "polyexponential": lambda s, n, **kw: steps.polyexponential(s, n, 2.0, **kw),
    "karras": steps.karras,
    "kl_optimal": steps.kl_optimal,
}


def _st(s, t):
    return np.exp(-np.asarray(s.lam(t)))  # sigma_tilde


def _check(s, ts, n, t0, t1):
    ts = np.asarray(ts)
    assert ts.shape == (n + 1,)
    assert np.all(np.diff(ts) < 0)
    assert ts[0] == t0 and ts[-1] == t1


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("spacing", list(SPACINGS))
def test_default_ends_and_monotone(spacing, sched):
    s = SCHEDULES[sched]
    _check(s, SPACINGS[spacing](s, N), N, s.t_max, s.t_min)


@pytest.mark.parametrize("sched", ZERO_REACHING)
@pytest.mark.parametrize("spacing", list(SPACINGS))
def test_append_zero(spacing, sched):
    s = SCHEDULES[sched]
    ts = SPACINGS[spacing](s, N, append_zero=True)
    _check(s, ts, N, s.t_max, s.t_lo)
    assert float(s.sigma(ts[-1])) == 0.0
    assert ts[-2] == s.t_min  # N spaced points, then sigma = 0
    # one step: straight from t_start to sigma = 0
    np.testing.assert_array_equal(SPACINGS[spacing](s, 1, append_zero=True), [s.t_max, s.t_lo])


def test_custom_ends_and_one_step():
    s = VPCosine()
    for f in SPACINGS.values():
        _check(s, f(s, N, t_start=0.8, t_end=0.05), N, 0.8, 0.05)
        _check(s, f(s, 1), 1, s.t_max, s.t_min)


# -- the formulas ----------------------------------------------------------------------


def test_uniform_time_and_quadratic():
    s = VPLinear()
    np.testing.assert_allclose(steps.uniform_time(s, N), np.linspace(1.0, 1e-3, N + 1),
                               rtol=1e-15)
    ts = steps.time_quadratic(s, N)
    np.testing.assert_allclose(np.diff(np.sqrt(ts)), (np.sqrt(1e-3) - 1) / N, rtol=1e-12)


@pytest.mark.parametrize("sched", ["vp_cosine", "ddpm", "rf_shift3"])
def test_logsnr_spacings(sched):
    s = SCHEDULES[sched]
    ts = steps.uniform_logsnr(s, N)
    lam = np.asarray(s.lam(ts))
    np.testing.assert_allclose(np.diff(lam), np.mean(np.diff(lam)), rtol=1e-10)
    # exponential (log sigma_tilde uniform) is the same; so is polyexponential(rho=1)
    np.testing.assert_allclose(steps.exponential(s, N), ts, rtol=1e-13)
    np.testing.assert_allclose(steps.polyexponential(s, N, 1.0), ts, rtol=1e-13)


def test_polyexponential_matches_k_diffusion_formula():
    s, rho = EDM(), 2.5
    ramp = np.linspace(1, 0, N + 1) ** rho
    ref = np.exp(ramp * (np.log(80.0) - np.log(0.002)) + np.log(0.002))
    np.testing.assert_allclose(steps.polyexponential(s, N, rho), ref, rtol=1e-13)


def test_karras_matches_edm_formula():
    # Karras et al. 2022 eq. 5 with N = 18, rho = 7, 0.002..80, then sigma = 0
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    ts = steps.karras(EDM(), 18, append_zero=True)
    np.testing.assert_allclose(ts, np.append(ref, 0.0), rtol=1e-13)
    assert ts[0] == 80.0 and ts[-1] == 0.0
    # ending exactly at sigma = 0 is allowed too (the formula covers it)
    ts = steps.karras(EDM(), N, t_end=0.0)
    assert ts[-1] == 0.0 and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("sched", ["vp_linear", "ddpm", "rf"])
def test_karras_in_sigma_tilde(sched):
    s, rho = SCHEDULES[sched], 7.0
    st = _st(s, steps.karras(s, N, rho))
    r = st ** (1 / rho)
    np.testing.assert_allclose(np.diff(r), np.mean(np.diff(r)), rtol=1e-9)
    np.testing.assert_allclose(st[[0, -1]], _st(s, np.array([s.t_max, s.t_min])), rtol=1e-12)


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_kl_optimal_closed_form(c):
    s = VPCosine()
    ts = steps.kl_optimal(s, N, data_std=c)
    st = _st(s, ts)
    s_max, s_min = _st(s, s.t_max), _st(s, s.t_min)
    i = np.arange(N + 1) / N
    ref = c * np.tan((1 - i) * np.arctan(s_max / c) + i * np.arctan(s_min / c))
    np.testing.assert_allclose(st, ref, rtol=1e-11)
    # ComfyUI's kl_optimal (c = 1): n sigmas equally spaced in atan(sigma), then 0
    ts = steps.kl_optimal(EDM(), N, append_zero=True)
    a = np.arctan(np.asarray(ts[:-1]))
    np.testing.assert_allclose(np.diff(a), np.mean(np.diff(a)), rtol=1e-12)
    assert ts[-1] == 0.0


def test_sgm_uniform():
    s = DiscreteVP.linear()
    ts = steps.sgm_uniform(s, N)
    np.testing.assert_allclose(ts[:-1], np.linspace(1.0, 1e-3, N + 1)[:-1], rtol=1e-14)
    assert ts.shape == (N + 1,) and ts[-1] == 0.0
    with pytest.raises(ValueError, match="reaches sigma = 0"):
        steps.sgm_uniform(VE(), N)


# -- discrete spacings (diffusers' timestep_spacing) -----------------------------------


def _labels(s, ts):
    return np.round(np.asarray(s.label(ts[:-1])), 9)


def test_discrete_spacing_labels():
    s = DiscreteVP.scaled_linear()
    np.testing.assert_array_equal(
        _labels(s, steps.discrete_spacing(s, N, "linspace")),
        [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
    np.testing.assert_array_equal(
        _labels(s, steps.discrete_spacing(s, N, "leading", steps_offset=1)),
        [901, 801, 701, 601, 501, 401, 301, 201, 101, 1])
    np.testing.assert_array_equal(
        _labels(s, steps.discrete_spacing(s, N, "trailing")),
        [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
    # trailing with a count that does not divide N (diffusers: round(arange(N, 0, -N/n)) - 1)
    np.testing.assert_array_equal(_labels(s, steps.discrete_spacing(s, 3, "trailing")),
                                  [999, 666, 332])
    ts = steps.discrete_spacing(s, N, "trailing")
    assert ts.shape == (N + 1,) and ts[0] == 1.0 and ts[-1] == 0.0
    # SD 1.x: leading, steps_offset=1, DDIM without set_alpha_to_one (ends at label 0)
    ts = steps.discrete_spacing(s, N, "leading", steps_offset=1, final="sigma_min")
    np.testing.assert_allclose(s.label(ts[-2:]), [1.0, 0.0], atol=1e-9)


def test_discrete_spacing_final_and_errors():
    s = DiscreteVP.scaled_linear()
    ts = steps.discrete_spacing(s, N, "trailing", final="sigma_min")
    assert ts[-1] == 1e-3 and np.isclose(float(s.label(ts[-1])), 0.0)
    with pytest.raises(ValueError, match="last label above 0"):
        steps.discrete_spacing(s, N, "linspace", final="sigma_min")
    with pytest.raises(ValueError, match="repeat a label"):
        steps.discrete_spacing(DiscreteVP.linear(20), 30, "linspace")
    with pytest.raises(ValueError, match="spacing must be"):
        steps.discrete_spacing(s, N, "cosine")
    with pytest.raises(TypeError, match="DiscreteVP"):
        steps.discrete_spacing(VPLinear(), N)
    with pytest.raises(ValueError, match="leave 0..999"):
        steps.discrete_spacing(s, N, "leading", steps_offset=200)


def test_zero_terminal_snr_trailing():
    z = DiscreteVP.scaled_linear().zero_terminal_snr()
    # trailing starts at t = 1, where alpha = 0: no sampler can start there
    with pytest.raises(ValueError, match="alpha = 0"):
        steps.discrete_spacing(z, N, "trailing")
    # diffusers' fix (alphas_cumprod[-1] = 2**-24) makes it usable
    z24 = DiscreteVP.scaled_linear().zero_terminal_snr(2.0**-24)
    assert steps.discrete_spacing(z24, N, "trailing")[0] == 1.0
    # default ends of the exact one: t_max = (N - 1)/N
    assert steps.uniform_logsnr(z, N)[0] == 0.999


# -- Align Your Steps ------------------------------------------------------------------


@pytest.mark.parametrize("model, schedule", [("sd15", EDM()), ("sdxl", EDM()),
                                             ("svd", EDM(sigma_max=700.0))])
def test_ays_table_reproduced(model, schedule):
    ts = steps.align_your_steps(schedule, 10, model)  # EDM: t = sigma_tilde
    np.testing.assert_allclose(ts, steps.AYS_SIGMAS[model], rtol=1e-13)
    zero = steps.align_your_steps(schedule, 10, model, append_zero=True)
    np.testing.assert_array_equal(zero[:-1], ts[:-1])
    assert zero[-1] == 0.0


def test_ays_interpolation():
    table = np.array(steps.AYS_SIGMAS["sdxl"])
    for n in (5, 16):
        xs, new = np.linspace(0, 1, 11), np.linspace(0, 1, n + 1)
        ref = np.exp(np.interp(new, xs, np.log(table[::-1])))[::-1]
        np.testing.assert_allclose(steps.align_your_steps(EDM(), n, "sdxl"), ref, rtol=1e-13)
    # the 20-step schedule passes through every other point of the 10-step one
    np.testing.assert_allclose(steps.align_your_steps(EDM(), 20, "sdxl")[::2], table,
                               rtol=1e-13)


def test_ays_on_stable_diffusion_schedule():
    s = DiscreteVP.scaled_linear()
    ts = steps.align_your_steps(s, 10, "sd15")
    # diffusers' AysSchedules["StableDiffusionTimesteps"] are these labels, rounded
    ref = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    np.testing.assert_allclose(s.label(ts[:-1]), ref, atol=0.6)
    # the table's first sigma (14.615, rounded) is the schedule's own maximum
    assert ts[0] == 1.0
    np.testing.assert_allclose(_st(s, ts[1:]), steps.AYS_SIGMAS["sd15"][1:], rtol=1e-12)


def test_ays_errors():
    with pytest.raises(ValueError, match="leave the schedule's range"):
        steps.align_your_steps(EDM(), 10, "svd")  # sigma 700 > sigma_max = 80
    with pytest.raises(ValueError, match="model must be one of"):
        steps.align_your_steps(EDM(), 10, "sd3")


# -- validation --------------------------------------------------------------------------


def test_custom_validates():
    s = VPLinear()
    np.testing.assert_array_equal(steps.custom(s, [1.0, 0.5, 0.1]), [1.0, 0.5, 0.1])
    assert steps.custom(s, [1, 0]).dtype == jnp.float64
    with pytest.raises(ValueError, match="strictly decreasing"):
        steps.custom(s, [1.0, 0.5, 0.6])
    with pytest.raises(ValueError, match="strictly decreasing"):
        steps.custom(s, [1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="leave the schedule's range"):
        steps.custom(s, [1.5, 0.5])
    with pytest.raises(ValueError, match="1-D"):
        steps.custom(s, [[1.0, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        steps.custom(s, [1.0, np.nan])
    with pytest.raises(ValueError, match="at least 2"):
        steps.custom(s, [1.0])


def test_check_timesteps_is_validate_timesteps():
    s = RectifiedFlow()
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_timesteps(s, [0.1, 0.5])
    with pytest.raises(ValueError, match=r"only the last timestep may have sigma = 0.*alpha = 0"):
        check_timesteps(s, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(check_timesteps(s, [0.9, 0.0]), [0.9, 0.0])
    with pytest.raises(ValueError, match="at least 3"):
        check_timesteps(s, [0.9, 0.0], min_len=3)


def test_bad_requests():
    s = VPCosine()
    with pytest.raises(ValueError, match="at least 1"):
        steps.uniform_time(s, 0)
    with pytest.raises(TypeError, match="int"):
        steps.karras(s, 2.5)
    with pytest.raises(ValueError, match="greater than t_end"):
        steps.uniform_logsnr(s, N, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="greater than t_end"):
        steps.karras(s, N, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="leaves the schedule's range"):
        steps.uniform_time(s, N, t_start=1.2)
    with pytest.raises(ValueError, match="leaves the schedule's range"):
        steps.karras(EDM(), N, t_start=100.0)
    with pytest.raises(ValueError, match="append_zero=True"):
        steps.uniform_logsnr(EDM(), N, t_end=0.0)
    with pytest.raises(ValueError, match="reaches sigma = 0"):
        steps.karras(VE(), N, append_zero=True)
    with pytest.raises(ValueError, match="alpha = 0"):
        steps.uniform_time(RectifiedFlow(), N, t_start=1.0)


# -- transforms and float32 --------------------------------------------------------------


def test_jit_and_grad_in_ends():
    s = EDM()
    f = jax.jit(lambda t0: steps.karras(s, N, t_start=t0))
    np.testing.assert_allclose(f(80.0), steps.karras(s, N), rtol=1e-14)
    g = jax.grad(lambda t0: jnp.sum(steps.uniform_logsnr(VPCosine(), N, t_start=t0)))(0.9)
    assert np.isfinite(float(g)) and float(g) > 0


@pytest.mark.parametrize("spacing", list(SPACINGS))
def test_float32(spacing, float32):
    for s in (VPCosine(), DiscreteVP.linear(), RectifiedFlow()):
        ts = SPACINGS[spacing](s, N, append_zero=True)
        assert ts.dtype == jnp.float32
        assert np.all(np.diff(np.asarray(ts)) < 0) and not np.any(np.isnan(ts))
        assert ts[0] == np.float32(s.t_max) and ts[-1] == 0.0
