"""The plan builder and the one executor, independent of any particular solver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import PlanBuilder, sample, stack_plans
from samplax.models import gaussian_flow, point_mass, random_mixture
from samplax.schedules import VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.plan import Lin, pad_plan

S = VPLinear()
TS = jnp.array([1.0, 0.7, 0.4, 0.2, 0.05, 1e-3])


def _data():
    return random_mixture(jax.random.key(3), 3, 2)


def _xT(n=6, d=3):
    return jax.random.normal(jax.random.key(0), (n, d))


def _loop_ddim(den, ts, x):
    """DDIM as a plain Python loop, the way the paper writes it."""
    for s, t in zip(ts[:-1], ts[1:]):
        x0 = den(x, s)
        eps = (x - S.alpha(s) * x0) / S.sigma(s)
        x = S.alpha(t) * x0 + S.sigma(t) * eps
    return x


def test_executor_matches_python_loop():
    den = _data().denoiser(S)
    x = _xT()
    np.testing.assert_allclose(sample(den, ddim(S, TS), x), _loop_ddim(den, TS, x), atol=1e-12)


def test_jit_equals_eager_and_traces_once():
    den = _data().denoiser(S)
    x = _xT()
    traces = []

    def f(plan, x):
        traces.append(1)
        return sample(den, plan, x)

    jf = jax.jit(f)
    a = jf(ddim(S, TS), x)
    b = jf(ddim(S, TS * 0.9 + 0.05), x)  # new times, same shapes: no retrace
    np.testing.assert_allclose(a, sample(den, ddim(S, TS), x), atol=1e-13)
    assert not np.allclose(a, b)
    assert len(traces) == 1


def test_vmap_over_samples_and_plans():
    den = _data().denoiser(S)
    x = _xT()
    one = sample(den, ddim(S, TS), x)
    per_row = jax.vmap(lambda xi: sample(den, ddim(S, TS), xi[None])[0])(x)
    np.testing.assert_allclose(per_row, one, atol=1e-13)
    plans = [ddim(S, TS), ddim(S, jnp.array([1.0, 0.5, 0.3, 0.1, 0.01, 1e-3]))]
    stacked = stack_plans(plans)
    both = jax.vmap(sample, in_axes=(None, 0, None))(den, stacked, x)
    for i, p in enumerate(plans):
        np.testing.assert_allclose(both[i], sample(den, p, x), atol=1e-13)


def test_gradient_wrt_times_is_finite_and_matches_finite_difference():
    den = _data().denoiser(S)
    x = _xT()
    target = jnp.ones_like(x)

    def loss(inner):
        ts = jnp.concatenate([TS[:1], inner, TS[-1:]])
        return jnp.sum((sample(den, ddim(S, ts), x) - target) ** 2)

    inner = TS[1:-1]
    g = jax.grad(loss)(inner)
    assert np.all(np.isfinite(g))
    e = jnp.zeros_like(inner).at[1].set(1e-6)
    fd = (loss(inner + e) - loss(inner - e)) / 2e-6
    np.testing.assert_allclose(g[1], fd, rtol=1e-5)


def test_pad_plan_keeps_samples():
    den = _data().denoiser(S)
    x = _xT()
    p = ddim(S, TS)
    np.testing.assert_allclose(sample(den, pad_plan(p, 3, 2), x), sample(den, p, x), atol=1e-13)


def test_point_mass_exact_from_float32(float32):
    # float32 stability: the same plan, no NaN, close to the closed form.
    s = VPLinear()
    data = point_mass(jnp.array([1.0, -2.0, 0.5]))
    x = jax.random.normal(jax.random.key(0), (4, 3), jnp.float32)
    out = sample(data.denoiser(s), ddim(s, jnp.linspace(1.0, 1e-3, 11)), x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, gaussian_flow(data, s, x, 1.0, 1e-3), atol=1e-4)


def test_stochastic_plan_noise_is_per_sample_and_keyed():
    """A toy stochastic plan: DDIM step plus fresh noise; noise of row i must not
    depend on the batch size, and the same key gives the same samples."""
    den = point_mass(jnp.zeros(2)).denoiser(S)
    b = PlanBuilder(S)
    for s, t in zip(TS[:-1], TS[1:]):
        out = b.evaluate(b.x, s)
        b.set_x(S.alpha(t) * out.d + S.sigma(t) * b.noise())  # DDPM-like full renoise
    plan = b.build()
    assert plan.stochastic
    x = jax.random.normal(jax.random.key(1), (5, 2))
    key = jax.random.key(7)
    a = sample(den, plan, x, key)
    np.testing.assert_allclose(sample(den, plan, x[:3], key), a[:3], atol=0)
    np.testing.assert_allclose(sample(den, plan, x, key), a, atol=0)
    assert not np.allclose(sample(den, plan, x, jax.random.key(8)), a)
    with pytest.raises(ValueError, match="PRNG key"):
        sample(den, plan, x)
    # final state: x0 = 0 plus sigma(t_end) * z exactly
    z_std = float(jnp.std(sample(den, plan, jnp.zeros((4000, 2)), key)))
    assert abs(z_std - float(S.sigma(TS[-1]))) < 0.05 * float(S.sigma(TS[-1]))


def test_builder_rejects_misuse():
    b = PlanBuilder(S)
    old = b.x
    b.set_x(2.0 * b.x)
    with pytest.raises(ValueError, match="stale anchor"):
        b.evaluate(old, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        PlanBuilder(S).build()
    b = PlanBuilder(S)
    z = b.noise()
    b.evaluate(b.x + z, 1.0)
    b.evaluate(b.x + z, 0.5)
    with pytest.raises(ValueError, match="one slot"):
        b.build()
    with pytest.raises(TypeError):
        Lin({("x", 0): 1.0}) * Lin({("x", 0): 1.0})


def test_sample_rejects_bad_input():
    den = _data().denoiser(S)
    with pytest.raises(TypeError, match="floating"):
        sample(den, ddim(S, TS), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="denoiser returned shape"):
        sample(lambda x, t: x[..., :2], ddim(S, TS), _xT())
    with pytest.raises(ValueError, match="vmap"):
        sample(den, stack_plans([ddim(S, TS)] * 2), _xT())
    with pytest.raises(ValueError, match="same NFE"):
        stack_plans([ddim(S, TS), ddim(S, TS[:-1])])


def test_segments_switch_denoisers_between_slots():
    from samplax.solvers.executor import Segments

    data = _data()
    den = data.denoiser(S)
    calls = []

    def counting(tag):
        def f(x, t):
            calls.append(tag)  # trace-time count: one per scan body trace
            return den(x, t)
        return f

    x = _xT()
    plan = ddim(S, TS)
    out = sample(Segments((counting("a"), counting("b")), (0, 2)), plan, x)
    np.testing.assert_allclose(out, sample(den, plan, x), atol=1e-13)
    assert calls == ["a", "b"]
    with pytest.raises(ValueError, match="Segments"):
        sample(Segments((den, den), (0, 9)), plan, x)


def test_slot_hook_sees_every_slot_and_can_reorder():
    class Reverse:
        def init(self, x_T):
            return jnp.zeros((), jnp.int32)

        def __call__(self, state, k, t, x, D, E, d, key):
            # flip the population; after an even number of slots it is restored
            return state + 1, x[::-1], D[:, ::-1], E[:, ::-1]

    den = _data().denoiser(S)
    x = _xT()
    plan = ddim(S, TS[:5])  # 4 slots
    out, count = sample(den, plan, x, jax.random.key(0), hook=Reverse())
    assert int(count) == 4
    np.testing.assert_allclose(out, sample(den, plan, x), atol=1e-13)
