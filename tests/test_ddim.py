import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import fitted_order, logsnr_times

from samplax.models import gaussian_flow, point_mass
from samplax.schedules import VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.executor import sample


def test_ddim_exact_on_point_mass():
    s = VPLinear()
    data = point_mass(jnp.array([1.0, -2.0, 0.5]))
    x_T = jax.random.normal(jax.random.key(0), (5, 3))
    ts = jnp.array([1.0, 0.6, 0.2, 1e-3])
    out = sample(data.denoiser(s), ddim(s, ts), x_T)
    np.testing.assert_allclose(out, gaussian_flow(data, s, x_T, 1.0, 1e-3), atol=1e-13)


def test_ddim_first_order():
    order, err = fitted_order(lambda s, n: ddim(s, logsnr_times(s, n)), [20, 40, 80])
    assert abs(order - 1.0) < 0.3, (order, err)


def test_rejects_increasing_times():
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim(VPLinear(), jnp.array([0.1, 0.5, 1.0]))
