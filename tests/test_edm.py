"""Euler and Heun in the EDM view (Karras et al. 2022, Algorithm 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import fitted_order, logsnr_times

from samplax.models import gaussian_flow, point_mass, random_mixture
from samplax.schedules import EDM, VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.edm import euler, heun
from samplax.solvers.executor import sample

run = jax.jit(sample, static_argnums=0)


def _mixture():
    return random_mixture(jax.random.key(3), 3, 3, spread=1.0, scale=0.5)


def _np_denoiser(data, schedule):
    den = data.denoiser(schedule)
    return lambda x, t: np.asarray(den(jnp.asarray(x), jnp.asarray(t)))


# -- equivalences and exactness ------------------------------------------------------


def test_euler_equals_ddim():
    """Euler in the EDM view is DDIM, for VP and for EDM schedules (also to sigma = 0)."""
    data = _mixture()
    for s, ts in [
        (VPLinear(), logsnr_times(VPLinear(), 12)),
        (EDM(0.0, 2.0), jnp.array([2.0, 1.5, 0.9, 0.5, 0.2, 0.05, 0.0])),
    ]:
        x_T = s.marginal_std(ts[0]) * jax.random.normal(jax.random.key(0), (16, 3))
        den = data.denoiser(s)
        out_e = run(den, euler(s, ts), x_T)
        out_d = run(den, ddim(s, ts), x_T)
        assert bool(jnp.all(jnp.isfinite(out_e)))
        np.testing.assert_allclose(out_e, out_d, rtol=0, atol=1e-12)


def test_exact_on_point_mass():
    """For a point mass, x_tilde is linear in sigma_tilde: Euler and Heun are exact."""
    s = VPLinear()
    data = point_mass(jnp.array([1.0, -2.0, 0.5]))
    x_T = jax.random.normal(jax.random.key(0), (5, 3))
    ts = jnp.array([1.0, 0.6, 0.2, 1e-3])
    exact = gaussian_flow(data, s, x_T, 1.0, 1e-3)
    for plan in [heun(s, ts), heun(s, ts, final_euler=False)]:
        np.testing.assert_allclose(run(data.denoiser(s), plan, x_T), exact, atol=1e-12)


def test_last_euler_step_returns_x0_hat_exactly():
    """A step that reaches sigma = 0 is plain Euler and returns x0_hat exactly."""
    s = EDM(0.0, 2.0)
    data = _mixture()
    den = data.denoiser(s)
    x_T = 2.0 * jax.random.normal(jax.random.key(1), (8, 3))
    ts = jnp.array([2.0, 0.0])
    x0_hat = den(x_T, 2.0)
    np.testing.assert_allclose(run(den, euler(s, ts), x_T), x0_hat, rtol=0, atol=1e-15)
    np.testing.assert_allclose(run(den, heun(s, ts), x_T), x0_hat, rtol=0, atol=1e-15)


# -- against straightforward re-implementations ----------------------------------------


def _np_heun_kdiffusion(den, x, sigmas):
    """k-diffusion's ``sample_heun`` (no churn) for alpha = 1, sigma = t, in numpy."""
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        d = (x - den(x, s0)) / s0
        if s1 == 0:
            x = x + d * (s1 - s0)
        else:
            x2 = x + d * (s1 - s0)
            d2 = (x2 - den(x2, s1)) / s1
            x = x + 0.5 * (d + d2) * (s1 - s0)
    return x


def _np_heun_vp(den, x, ts, b0=0.1, b1=20.0):
    """EDM Algorithm 1 on x/alpha with sigma_tilde = sigma/alpha as time, VP-linear, numpy."""
    alpha = np.exp(-0.25 * ts**2 * (b1 - b0) - 0.5 * ts * b0)
    sig = np.sqrt(1.0 - alpha**2) / alpha
    n = len(ts) - 1
    for i in range(n):
        y = x / alpha[i]
        d = (y - den(x, ts[i])) / sig[i]
        y2 = y + d * (sig[i + 1] - sig[i])
        if i == n - 1:
            y = y2
        else:
            d2 = (y2 - den(alpha[i + 1] * y2, ts[i + 1])) / sig[i + 1]
            y = y + 0.5 * (d + d2) * (sig[i + 1] - sig[i])
        x = alpha[i + 1] * y
    return x


def test_heun_matches_kdiffusion_reimplementation():
    s = EDM(0.0, 2.0)
    data = _mixture()
    x_T = 2.0 * np.asarray(jax.random.normal(jax.random.key(2), (16, 3)))
    sig = np.array([2.0, 1.3, 0.8, 0.45, 0.2, 0.05, 0.0])  # final sigma = 0 -> Euler
    ref = _np_heun_kdiffusion(_np_denoiser(data, s), x_T, sig)
    out = run(data.denoiser(s), heun(s, jnp.asarray(sig)), jnp.asarray(x_T))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_heun_matches_reimplementation_vp():
    s = VPLinear()
    data = _mixture()
    x_T = np.asarray(jax.random.normal(jax.random.key(2), (16, 3)))
    ts = np.asarray(logsnr_times(s, 7))
    ref = _np_heun_vp(_np_denoiser(data, s), x_T, ts)
    out = run(data.denoiser(s), heun(s, jnp.asarray(ts)), jnp.asarray(x_T))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


# -- convergence, NFE, gradients, sigma = 0 ---------------------------------------------


def test_heun_second_order_in_nfe():
    """Measured 2.07 (N = 20 -> 40 steps, NFE = 2N - 1 = 39 -> 79)."""
    ns = [20, 40]
    order, err = fitted_order(
        lambda s, n: heun(s, logsnr_times(s, n)), ns, cost=[2 * n - 1 for n in ns]
    )
    assert abs(order - 2.0) < 0.3, (order, err)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_nfe(n):
    s = VPLinear()
    ts = logsnr_times(s, n)
    assert euler(s, ts).nfe == n
    assert heun(s, ts).nfe == 2 * n - 1
    assert heun(s, ts, final_euler=False).nfe == 2 * n


def test_no_nan_at_zero_noise_and_finite_gradients():
    """Final sigma = 0 (alpha = 1, sigma = t, t = 0): finite samples and time gradients."""
    s = EDM(0.0, 2.0)
    data = _mixture()
    den = data.denoiser(s)
    x_T = 2.0 * jax.random.normal(jax.random.key(4), (8, 3))

    def loss(interior):
        ts = jnp.concatenate([jnp.array([2.0]), interior, jnp.array([0.0])])
        return jnp.sum(sample(den, heun(s, ts), x_T) ** 2)

    interior = jnp.array([1.2, 0.5, 0.1])
    val, grad = jax.jit(jax.value_and_grad(loss))(interior)
    assert bool(jnp.isfinite(val)), val
    assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.any(grad != 0)), grad


# -- errors ---------------------------------------------------------------------------


def test_bad_options():
    s = EDM(0.0, 2.0)
    with pytest.raises(ValueError, match="final_euler"):
        heun(s, jnp.array([2.0, 1.0, 0.5]), final_euler="yes")
    with pytest.raises(ValueError, match="sigma = 0"):
        heun(s, jnp.array([2.0, 1.0, 0.0]), final_euler=False)
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler(s, jnp.array([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="at least"):
        heun(s, jnp.array([2.0]))
