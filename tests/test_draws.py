"""The executor's Gaussian draws: the numbers of ``jax.random`` bit for bit, from a hash
XLA can fuse, drawn only in the slots that use them; and the executor's memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import PlanBuilder, sample
from samplax.models import point_mass
from samplax.schedules import VPLinear
from samplax.solvers.draws import normal_rows, sample_noise, threefry2x32
from samplax.solvers.registry import plan_for_nfe
from samplax.solvers.sde_dpm_solver import sde_dpm_solver_pp

S = VPLinear()
TS = jnp.linspace(1.0, 1e-3, 6)


def _jax_rows(key, shape, dtype):
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape[1:],
                                                dtype))(jnp.arange(shape[0]))


def test_threefry_matches_jax_random_bits():
    key = jax.random.key(42)
    words = jax.random.key_data(key)
    # fold_in is the hash of (0, data) under the key
    for data in (0, 1, 7, 2**31 + 5):
        f1, f2 = threefry2x32(words[0], words[1], jnp.uint32(0), jnp.uint32(data))
        np.testing.assert_array_equal(jnp.stack([f1, f2]),
                                      jax.random.key_data(jax.random.fold_in(key, data)))


@pytest.mark.parametrize("shape", [(3, 5), (1, 64), (4, 3, 7), (2, 1)])
@pytest.mark.parametrize("seed", [0, 123456789])
def test_sample_noise_is_jax_random_normal_float32(shape, seed):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(sample_noise(key, shape, jnp.float32),
                                  _jax_rows(key, shape, jnp.float32))
    raw = jax.random.PRNGKey(seed)  # raw uint32 keys give the same numbers
    np.testing.assert_array_equal(sample_noise(raw, shape, jnp.float32),
                                  _jax_rows(key, shape, jnp.float32))


def test_sample_noise_is_jax_random_normal_float64():
    key = jax.random.key(3)
    z = sample_noise(key, (5, 33), jnp.float64)
    assert z.dtype == jnp.float64
    np.testing.assert_array_equal(z, _jax_rows(key, (5, 33), jnp.float64))


def test_other_key_kinds_and_dtypes_fall_back_to_jax_random():
    rbg = jax.random.key(1, impl="rbg")
    np.testing.assert_array_equal(sample_noise(rbg, (3, 4), jnp.float32),
                                  _jax_rows(rbg, (3, 4), jnp.float32))
    key = jax.random.key(1)
    np.testing.assert_array_equal(sample_noise(key, (3, 4), jnp.bfloat16),
                                  _jax_rows(key, (3, 4), jnp.bfloat16))
    with pytest.raises(ValueError, match="float32 or float64"):
        normal_rows(jnp.zeros(2, jnp.uint32), jnp.zeros(2, jnp.uint32), (3,), jnp.float16)


def _toy_plan():
    """Full renoise at every step: x_{k+1} = alpha D + sigma z_k."""
    b = PlanBuilder(S)
    for s, t in zip(TS[:-1], TS[1:]):
        out = b.evaluate(b.x, s)
        b.set_x(S.alpha(t) * out.d + S.sigma(t) * b.noise())
    return b.build()


def test_slot_k_row_i_draws_fold_in_fold_in():
    """Slot k's noise of row i is normal(fold_in(fold_in(key, k), i)): the documented
    stream, unchanged by the fused draws."""
    den = point_mass(jnp.zeros(3)).denoiser(S)  # D = 0: the sample is sigma(t_end) z_last
    plan = _toy_plan()
    key = jax.random.key(5)
    out = sample(den, plan, jnp.zeros((4, 3)), key)
    k_last = plan.nfe - 1
    want = S.sigma(TS[-1]) * _jax_rows(jax.random.fold_in(key, k_last), (4, 3), jnp.float64)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    # the same under jit and with a raw key
    np.testing.assert_array_equal(jax.jit(lambda x, k: sample(den, plan, x, k))(
        jnp.zeros((4, 3)), key), out)
    np.testing.assert_array_equal(sample(den, plan, jnp.zeros((4, 3)),
                                         jax.random.key_data(key)), out)


def test_a_draw_after_slots_without_noise_is_its_own_slots():
    """Slots whose combinations do not weigh the noise skip their draw; a later draw is
    still slot k's numbers (the stream does not shift)."""
    den = point_mass(jnp.zeros(2)).denoiser(S)
    b = PlanBuilder(S)
    for j, (s, t) in enumerate(zip(TS[:-1], TS[1:])):
        out = b.evaluate(b.x, s)
        b.set_x(S.alpha(t) * out.d + (S.sigma(t) * b.noise() if j == 4 else 0.0 * b.x))
    plan = b.build()
    key = jax.random.key(9)
    got = sample(den, plan, jnp.zeros((3, 2)), key)
    want = S.sigma(TS[-1]) * _jax_rows(jax.random.fold_in(key, 4), (3, 2), jnp.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def _temp_states(plan, batch=256, dim=512):
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (dim, 32)) / dim**0.5
    w2 = jax.random.normal(k2, (32, dim)) / 6.0

    def den(x, t):
        return jax.nn.silu(x @ w1 + t) @ w2

    x = jnp.zeros((batch, dim), jnp.float32)
    fn = jax.jit(lambda x, k: sample(den, plan, x, k))
    memory = fn.lower(x, jax.random.key(0)).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend gives no memory analysis")
    return memory.temp_size_in_bytes / x.nbytes


@pytest.mark.parametrize("name", ["ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m",
                                  "unipc_bh2_3", "deis_tab_3", "ipndm"])
def test_executor_keeps_at_most_history_plus_three_states(name, float32):
    """The compiled program's temporaries: the history buffers once, plus at most three
    state copies (measured: H + 1 for data-prediction buffers, H + 3 for
    noise-prediction ones), plus the model's own (here 1/16 of a state)."""
    plan = plan_for_nfe(name, S, 6)
    h = plan.evaluate.d.shape[1] + plan.evaluate.e.shape[1]
    assert _temp_states(plan) <= h + 3 + 1 / 16 + 0.01


def test_stochastic_executor_memory(float32):
    plan = sde_dpm_solver_pp(S, TS, order=2)
    h = plan.evaluate.d.shape[1] + plan.evaluate.e.shape[1]
    assert _temp_states(plan) <= h + 3 + 1 / 16 + 0.01
