import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import fitted_order, logsnr_times

from samplax import sample
from samplax.models import gaussian_flow, point_mass
from samplax.schedules import EDM, VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.usf import Step, interpolation_weights, usf

S = VPLinear()
TS = logsnr_times(S, 8)


def test_first_order_is_ddim_in_both_forms():
    x = jax.random.normal(jax.random.key(0), (4, 3))
    den = point_mass(jnp.array([0.3, -1.0, 2.0])).denoiser(S)
    ref = sample(den, ddim(S, TS), x)
    for pred in ("data", "noise"):
        np.testing.assert_allclose(sample(den, usf(S, TS, Step(pred, 1)), x), ref, atol=1e-12)


def test_weights_integrate_polynomials_exactly():
    # int_0^1 e^{z(1-u)} u^m du against the weights applied to u^m at the nodes
    r = [0.0, -0.7, -1.5]
    for z in (-2.0, 0.5):
        w = interpolation_weights(r, -z if z < 0 else z, "data" if z < 0 else "noise")
        u = np.linspace(0, 1, 200001)
        for m in range(3):
            exact = np.trapezoid(np.exp(z * (1 - u)) * u**m, u)
            np.testing.assert_allclose(float(sum(wj * rj**m for wj, rj in zip(w, r))), exact,
                                       rtol=1e-8)


@pytest.mark.parametrize(
    "step, nominal",
    [
        (Step("data", 2), 2),
        (Step("data", 3), 3),
        (Step("noise", 2), 2),
        (Step("data", 2, corrector=True), 3),
        (Step("noise", 3, corrector=True), 4),
    ],
)
def test_convergence_order(step, nominal):
    order, err = fitted_order(lambda s, n: usf(s, logsnr_times(s, n), step), [16, 32, 64])
    assert abs(order - nominal) < 0.3, (order, err)


def test_data_form_exact_on_point_mass():
    x = jax.random.normal(jax.random.key(1), (3, 2))
    data = point_mass(jnp.array([1.0, -1.0]))
    for st in (Step("data", 3), Step("data", 2, True)):
        out = sample(data.denoiser(S), usf(S, TS, st), x)
        np.testing.assert_allclose(out, gaussian_flow(data, S, x, TS[0], TS[-1]), atol=1e-12)


def test_afs_saves_one_nfe_and_zero_coefficients_change_nothing():
    assert usf(S, TS, afs=True).nfe == 7
    data = point_mass(jnp.array([0.5, 0.5]))
    x = jax.random.normal(jax.random.key(2), (3, 2))
    base = usf(S, TS, Step("data", 3))
    with_c = usf(S, TS, Step("data", 3), coefficients=jnp.zeros((8, 3)))
    np.testing.assert_allclose(sample(data.denoiser(S), with_c, x),
                               sample(data.denoiser(S), base, x), atol=1e-13)


def test_final_sigma_zero_is_finite_and_exact_for_point_mass():
    s = EDM(0.0, 10.0)
    ts = jnp.array([10.0, 3.0, 1.0, 0.3, 0.05, 0.0])
    data = point_mass(jnp.array([0.7, -0.2]))
    x = 10.0 * jax.random.normal(jax.random.key(3), (4, 2))
    out = sample(data.denoiser(s), usf(s, ts, Step("data", 3, True)), x)
    np.testing.assert_allclose(out, jnp.broadcast_to(data.means[0], out.shape), atol=1e-12)

    def loss(inner):
        t = jnp.concatenate([ts[:1], inner, ts[-1:]])
        return jnp.sum(sample(data.denoiser(s), usf(s, t, Step("data", 3, True)), x) ** 2)

    assert np.all(np.isfinite(jax.grad(loss)(ts[1:-1])))
    # the noise form falls back to the (exact) first-order data step at sigma = 0
    out = sample(data.denoiser(s), usf(s, ts, Step("noise", 2)), x)
    np.testing.assert_allclose(out, jnp.broadcast_to(data.means[0], out.shape), atol=1e-12)


def test_bad_choices_raise():
    with pytest.raises(ValueError, match="order"):
        usf(S, TS, Step("data", 7))
    with pytest.raises(ValueError, match="prediction"):
        usf(S, TS, [Step("eps", 2)] * 8)
    with pytest.raises(ValueError, match="step choices"):
        usf(S, TS, [Step()] * 3)
    with pytest.raises(ValueError, match="coefficients"):
        usf(S, TS, coefficients=jnp.zeros((2, 2)))
