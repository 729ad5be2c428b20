"""Population methods: resampling, Feynman-Kac steering, best-of-N and zero-order search."""

import guidance_problems as gp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.guidance import (
    FKSteering,
    best_of_n,
    ess,
    fk_steering,
    recurrent_ddim,
    resample,
    steering_slots,
    zero_order_search,
)
from samplax.solvers.ddim import ddim

S, D = gp.S, gp.uncond
AXIS = jnp.array([1.0, 0.0])


def reward(x0):
    """A linear reward: the first coordinate."""
    return x0 @ AXIS


def test_resampling_and_ess():
    n = 4
    w = jnp.array([0.1, 0.2, 0.3, 0.4])
    keys = jax.random.split(jax.random.key(0), 4000)

    @jax.jit
    def run(keys):
        counts = {}
        for m in ("multinomial", "systematic"):
            idx = jax.vmap(lambda k: resample(k, jnp.log(w), m))(keys)
            counts[m] = jnp.mean(jax.nn.one_hot(idx, n), axis=(0, 1))
        uniform = jax.vmap(lambda k: resample(k, jnp.zeros(6), "systematic"))(keys[:50])
        return counts, uniform

    counts, uniform = run(keys)
    for m, c in counts.items():
        np.testing.assert_allclose(c, w, atol=0.01, err_msg=m)  # frequencies = weights
    np.testing.assert_array_equal(uniform, np.tile(np.arange(6), (50, 1)))  # identity
    assert float(ess(jnp.zeros(8))) == pytest.approx(8.0)
    assert float(ess(jnp.array([0.0, -jnp.inf, -jnp.inf]))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        resample(keys[0], jnp.zeros(3), "stratified")


@pytest.mark.parametrize("potential", ["difference", "max", "sum"])
def test_fk_hook_bookkeeping(potential):
    """Potentials accumulate as defined, and resampling moves every per-particle
    array (anchor, both buffers, SMC state) by the same ancestor indices."""
    n, K, lam = 6, 5, 0.7
    rs = jax.random.normal(jax.random.key(1), (K, n))
    ids = jnp.arange(n, dtype=float)[:, None] * jnp.ones((1, 2))

    def run(thr):
        hook = FKSteering(lambda d: d[:, 1], steering_slots(K), lam, potential, thr)
        x, Dbuf, Ebuf = ids, ids[None], ids[None] + 100.0
        st = hook.init(x)
        for k in range(K):
            # a particle's reward depends on its lineage (its id, carried in x)
            d = jnp.stack([jnp.zeros(n), rs[k][x[:, 0].astype(int)]], -1)
            st, x, Dbuf, Ebuf = hook(st, k, 0.5, x, Dbuf, Ebuf, d, jax.random.key(k))
        return st, x, Dbuf, Ebuf

    st, x, _, _ = jax.jit(run)(0.0)  # never resample
    np.testing.assert_array_equal(x, ids)
    cum = {"difference": rs[-1],
           "max": jnp.sum(jax.lax.cummax(rs, axis=0), 0),
           "sum": jnp.sum(jnp.cumsum(rs, 0), 0)}[potential]
    np.testing.assert_allclose(st.log_w, lam * cum, atol=1e-12)
    np.testing.assert_allclose(st.log_g, lam * cum, atol=1e-12)
    assert not bool(st.resampled.any())
    st, x, Dbuf, Ebuf = jax.jit(run)(float("inf"))  # resample at every slot
    assert bool(st.resampled.all())
    anc = np.asarray(x[:, 0]).astype(int)  # the lineage of each final particle
    np.testing.assert_array_equal(Dbuf[0], x)
    np.testing.assert_array_equal(Ebuf[0], x + 100.0)
    np.testing.assert_allclose(st.r_prev, rs[-1][anc], atol=0)
    np.testing.assert_allclose(st.log_g, lam * cum[anc], atol=1e-12)
    np.testing.assert_allclose(st.log_w, 0.0, atol=0)


def test_fk_steering_raises_reward_and_keeps_the_law_for_a_constant_potential():
    """With reward r(x0) = x0[0], lam = 2: FK's particles have a much higher mean
    reward than as many independent particles, and its weighted estimate of
    E[r] under p(x0) exp(lam r) matches importance sampling of many independent
    samples of the same sampler. With a constant potential the samples are the
    plain sampler's (systematic: exactly; multinomial: in distribution)."""
    P, N, lam = 64, 32, 2.0
    plan = recurrent_ddim(S, jnp.linspace(1.0, 1e-3, 51), eta=1.0)
    x_T = gp.MIX.prior_sample(jax.random.key(0), P * N, S).reshape(P, N, 2)
    keys = jax.random.split(jax.random.key(1), P)

    def one(x, k, c, thr):
        r = lambda x0: c * reward(x0)  # noqa: E731 - c = 0: a constant potential
        return (fk_steering(D, plan, x, k, r, lam=lam, every=5, ess_threshold=thr),
                fk_steering(D, plan, x, k, r, lam=lam, every=5, ess_threshold=thr,
                            method="multinomial"),
                sample(D, plan, x, k))

    run = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))
    fk, fk_m, plain = run(x_T, keys, 1.0, 1.0)
    r_plain = reward(plain).reshape(-1)
    is_ref = float(jax.nn.softmax(lam * r_plain) @ r_plain)
    gains = {}
    for name, res in (("systematic", fk), ("multinomial", fk_m)):
        est = float(jnp.mean(jnp.sum(jax.nn.softmax(res.log_weights, -1) * res.rewards, -1)))
        gains[name] = float(jnp.mean(res.rewards)) - float(jnp.mean(r_plain))
        print(f"FK {name}: mean reward {float(jnp.mean(res.rewards)):.3f} vs independent "
              f"{float(jnp.mean(r_plain)):.3f}; weighted E[r] {est:.3f} vs IS {is_ref:.3f}; "
              f"{float(jnp.mean(jnp.sum(res.resampled, -1))):.1f} resamplings")
        assert gains[name] > 0.7
        assert abs(est - is_ref) < 0.15
    # constant potential
    fk0, fk0_m, plain0 = run(x_T, keys, 0.0, float("inf"))
    np.testing.assert_allclose(fk0.samples, plain0, atol=0)  # uniform systematic: identity
    np.testing.assert_allclose(fk0.log_weights, 0.0, atol=0)
    assert bool(fk0.resampled.any()) and bool(fk0_m.resampled.any())
    a, b = fk0_m.samples.reshape(-1, 2), plain0.reshape(-1, 2)
    assert not np.allclose(a, b)  # multinomial duplicates particles...
    assert abs(float(jnp.mean(a[:, 0]) - jnp.mean(b[:, 0]))) < 0.15  # ...keeping their law
    assert abs(float(jnp.mean(gp.class_prob(a)) - jnp.mean(gp.class_prob(b)))) < 0.06
    with pytest.raises(ValueError, match="potential"):
        fk_steering(D, plan, x_T[0], keys[0], reward, potential="min")


def test_best_of_n_and_zero_order_search():
    plan = ddim(S, jnp.linspace(1.0, 1e-3, 11))

    def sampler(z):
        return sample(D, plan, z)

    x_T = gp.MIX.prior_sample(jax.random.key(3), 16, S)
    bon = jax.jit(lambda z: best_of_n(sampler, reward, z))(x_T)
    r = reward(jax.jit(sampler)(x_T))
    assert float(bon.score) == pytest.approx(float(jnp.max(r)))
    np.testing.assert_allclose(bon.noise, x_T[int(jnp.argmax(r))], atol=0)
    np.testing.assert_allclose(reward(bon.sample[None])[0], bon.score, atol=1e-12)
    std = float(S.sigma(1.0))
    zo = jax.jit(lambda z: zero_order_search(sampler, reward, z, jax.random.key(4),
                                             n_candidates=4, n_rounds=5, step=0.5,
                                             noise_std=std))(x_T[:1])
    hist = np.asarray(zo.scores)
    assert np.all(np.diff(hist) >= 0) and hist[-1] > float(r[0])  # never worse, improves
    np.testing.assert_allclose(reward(jax.jit(sampler)(zo.noise[None]))[0], zo.score, atol=1e-10)
    print(f"best-of-16 reward {float(bon.score):.3f} (mean {float(jnp.mean(r)):.3f}); "
          f"zero-order search {float(r[0]):.3f} -> {hist.tolist()}")
