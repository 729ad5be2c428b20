"""Population methods: Feynman-Kac steering (SMC resampling), best-of-N and zero-order search.

The particle axis is the batch axis of ``x_T``: ``k`` particles for one
condition are ``k`` rows. Several independent populations are a ``jax.vmap``
over :func:`fk_steering`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from samplax.guidance._common import check_callable
from samplax.schedules.base import real_values
from samplax.solvers.executor import sample, sample_noise

Array = Any
POTENTIALS = ("difference", "max", "sum")
RESAMPLING = ("multinomial", "systematic")


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def ess(log_w):
    """Effective sample size ``(sum w)^2 / sum w^2`` of unnormalized log weights."""
    return jnp.exp(2.0 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2.0 * log_w))


def resample(key, log_w, method: str = "systematic"):
    """Ancestor indices ``[n]`` drawn in proportion to ``exp(log_w)``.

    ``"multinomial"``: ``n`` independent categorical draws. ``"systematic"``
    (Kitagawa 1996): one uniform ``u``, positions ``(u + i)/n`` on the weights'
    cumulative sum; lower variance, and equal weights give every particle once.
    """
    n = log_w.shape[0]
    if method == "multinomial":
        return jax.random.categorical(key, log_w, shape=(n,))
    if method == "systematic":
        cdf = jnp.cumsum(jax.nn.softmax(log_w))
        pos = (jax.random.uniform(key, (), cdf.dtype) + jnp.arange(n, dtype=cdf.dtype)) / n
        return jnp.minimum(jnp.searchsorted(cdf, pos, side="right"), n - 1)
    raise ValueError(f"unknown resampling method {method!r}; use one of {RESAMPLING}")


# --------------------------------------------------------------------------------------
# Feynman-Kac steering
# --------------------------------------------------------------------------------------


class FKState(NamedTuple):
    """Per-particle SMC state carried by :class:`FKSteering` (all ``[n]`` but the last two).

    ``log_w``: log weights since the last resampling; ``log_g``: sum of the log
    potentials applied along each particle's ancestry (for the final
    correction); ``r_prev``, ``r_max``, ``r_sum``: reward history; ``ess`` and
    ``resampled``: ``[K]`` diagnostics per slot (ESS before resampling; whether
    it resampled).
    """

    log_w: Array
    log_g: Array
    r_prev: Array
    r_max: Array
    r_sum: Array
    ess: Array
    resampled: Array


class FKSteering(eqx.Module):
    """Feynman-Kac steering as a :class:`~samplax.solvers.executor.SlotHook`
    (Singhal et al. 2025, "A general framework for inference-time scaling and
    steering of diffusion models").

    Target ``p(x0) exp(lam r(x0))``. At every steering slot ``k`` the reward of
    the newest data prediction, ``r_k = r(x0_hat)``, gives the potential

    - ``"difference"``: ``log G_k = lam (r_k - r_prev)`` (``r_prev = 0`` at first);
    - ``"max"``: ``log G_k = lam max_{j <= k} r_j``;
    - ``"sum"``: ``log G_k = lam sum_{j <= k} r_j``;

    which multiplies the particle's weight; when the effective sample size falls
    below ``ess_threshold * n`` the population (anchor and both history
    buffers, so multistep solvers stay consistent) is resampled and the weights
    reset. :func:`fk_steering` adds the final potential
    ``lam r(x0) - sum_k log G_k`` so that the weighted particles target the tilted
    distribution for every potential. Resampling only diversifies with a
    stochastic sampler (e.g. :func:`~samplax.guidance.recurrent_ddim` with
    ``eta > 0``); with an ODE solver duplicates stay identical.
    """

    reward: Callable
    steer: Array  # [K] bool: slots at which potentials are applied
    lam: float = 1.0
    potential: str = eqx.field(default="difference", static=True)
    ess_threshold: float = 0.5
    method: str = eqx.field(default="systematic", static=True)

    def init(self, x_T) -> FKState:
        n = x_T.shape[0]
        K = self.steer.shape[0]
        z = jnp.zeros((n,), x_T.dtype)
        return FKState(z, z, z, jnp.full((n,), -jnp.inf, x_T.dtype), z,
                       jnp.full((K,), float(n), x_T.dtype), jnp.zeros((K,), bool))

    def __call__(self, state: FKState, k, t, x, D, E, d, key):
        def steer(args):
            st, x, D, E = args
            n = x.shape[0]
            r = _rewards(self.reward(d), n).astype(st.log_w.dtype)
            r_max = jnp.maximum(st.r_max, r)
            r_sum = st.r_sum + r
            if self.potential == "difference":
                log_g = self.lam * (r - st.r_prev)
            elif self.potential == "max":
                log_g = self.lam * r_max
            else:
                log_g = self.lam * r_sum
            log_w = st.log_w + log_g
            acc = st.log_g + log_g
            e = ess(log_w)
            do = e < self.ess_threshold * n
            idx = jnp.where(do, resample(key, log_w, self.method), jnp.arange(n))
            st = FKState(
                log_w=jnp.where(do, jnp.zeros_like(log_w), log_w),
                log_g=acc[idx],
                r_prev=r[idx],
                r_max=r_max[idx],
                r_sum=r_sum[idx],
                ess=st.ess.at[k].set(e),
                resampled=st.resampled.at[k].set(do),
            )
            return st, x[idx], D[:, idx], E[:, idx]

        return jax.lax.cond(self.steer[k], steer, lambda a: a, (state, x, D, E))


def _rewards(r, n: int):
    """The reward's output, checked to be one value per particle (static shapes)."""
    r = jnp.asarray(r)
    if r.shape != (n,):
        raise ValueError(f"fk_steering: reward(x0) must return one value per particle, "
                         f"shape ({n},), got shape {r.shape}")
    return r


def steering_slots(n_slots: int, *, every: int = 1, start: int = 0, stop: int | None = None):
    """Boolean ``[n_slots]`` mask: slots ``start, start + every, ...`` before ``stop``."""
    stop = n_slots if stop is None else stop
    if every < 1 or not 0 <= start <= stop <= n_slots:
        raise ValueError(f"bad steering window: every={every}, start={start}, stop={stop}")
    k = np.arange(n_slots)
    return jnp.asarray((k >= start) & (k < stop) & ((k - start) % every == 0))


class FKResult(NamedTuple):
    """Final particles ``samples [n, ...]``, their ``log_weights [n]`` for the target
    ``p(x0) exp(lam r(x0))``, their ``rewards [n]``, and per-slot ``ess``/``resampled``."""

    samples: Array
    log_weights: Array
    rewards: Array
    ess: Array
    resampled: Array

    @property
    def weights(self):
        return jax.nn.softmax(self.log_weights)

    def best(self):
        """The particle with the highest reward."""
        return self.samples[jnp.argmax(self.rewards)]


def fk_steering(
    denoiser,
    plan,
    x_T,
    key,
    reward: Callable,
    *,
    lam: float = 1.0,
    potential: str = "difference",
    every: int = 1,
    start: int = 0,
    stop: int | None = None,
    ess_threshold: float = 0.5,
    method: str = "systematic",
) -> FKResult:
    """Sample ``n = x_T.shape[0]`` particles with Feynman-Kac steering (see :class:`FKSteering`).

    Args:
        denoiser, plan, x_T, key: as for :func:`samplax.sample` (a stochastic plan).
        reward: ``reward(x0) -> [n]``, applied to the data predictions and the
            final samples (a verifier, a log-likelihood, ...).
        lam: inverse temperature of the target ``p(x0) exp(lam r(x0))``.
        potential: ``"difference"``, ``"max"`` or ``"sum"``.
        every, start, stop: steering slots ``start, start + every, ...`` before ``stop``.
        ess_threshold: resample when ``ESS < ess_threshold * n`` (``inf``: always).
        method: ``"systematic"`` or ``"multinomial"`` resampling.

    Returns:
        :class:`FKResult`; resample it with ``resample(key, result.log_weights)`` or
        take ``result.best()``.

    Example::

        plan = recurrent_ddim(S, ts, eta=1.0)
        res = fk_steering(D, plan, x_T, key, reward, lam=5.0, every=5)
    """
    check_callable("fk_steering", "reward", reward, "a reward function reward(x0) -> [n]")
    real_values("fk_steering", "lam", lam, what="a finite number (the inverse temperature)")
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; use one of {POTENTIALS}")
    if method not in RESAMPLING:
        raise ValueError(f"unknown resampling method {method!r}; use one of {RESAMPLING}")
    steer = steering_slots(int(plan.t.shape[-1]), every=every, start=start, stop=stop)
    hook = FKSteering(reward, steer, lam, potential, ess_threshold, method)
    out, st = sample(denoiser, plan, x_T, key, hook=hook)
    r = _rewards(reward(out), x_T.shape[0]).astype(st.log_w.dtype)
    log_w = st.log_w + lam * r - st.log_g
    return FKResult(out, log_w, r, st.ess, st.resampled)


# --------------------------------------------------------------------------------------
# Search over initial noises
# --------------------------------------------------------------------------------------


class SearchResult(NamedTuple):
    """Best ``sample`` (no batch axis), its ``score``, its initial ``noise``, and
    ``scores`` (all candidates' for best-of-N; the best so far per round for
    zero-order search)."""

    sample: Array
    score: Array
    noise: Array
    scores: Array


def best_of_n(sampler: Callable, verifier: Callable, x_T) -> SearchResult:
    """Best-of-N / random search over initial noises (Ma et al. 2025, "Inference-time
    scaling for diffusion models beyond scaling denoising steps", Sec. 3.2).

    ``sampler(x_T) -> x0`` runs all ``N = x_T.shape[0]`` candidates in one batched
    call (cost ``N`` times the sampler's NFE); ``verifier(x0) -> [N]`` scores them.

    Example::

        res = best_of_n(lambda z: sample(den, plan, z), verifier, sigma_T * noise)
    """
    x0 = sampler(x_T)
    s = verifier(x0)
    i = jnp.argmax(s)
    return SearchResult(x0[i], s[i], x_T[i], s)


def zero_order_search(
    sampler: Callable,
    verifier: Callable,
    x_T,
    key,
    *,
    n_candidates: int = 8,
    n_rounds: int = 4,
    step: float = 0.3,
    noise_std: float = 1.0,
) -> SearchResult:
    """Zero-order search over initial noises (Ma et al. 2025, Sec. 3.2).

    Starting from the pivot ``x_T`` (one noise, shape ``[1, ...]``), each round
    draws ``n_candidates`` neighbours ``cos(step) pivot + sin(step) z``,
    ``z ~ N(0, I)`` (a rotation that keeps a standard Gaussian pivot's
    neighbours standard Gaussian, rather than the paper's sphere of radius
    ``lambda``), samples and scores them in one batched call, and moves the
    pivot to the best one if it beats the current best. Cost:
    ``1 + n_rounds * n_candidates`` sampler runs. ``noise_std`` is the scale of
    the initial noise (``sigma(t_0)`` of the plan; ``z`` is drawn at that scale).

    Example::

        res = zero_order_search(lambda z: sample(den, plan, z), verifier, x_T[:1],
                                jax.random.key(0), n_candidates=8, n_rounds=4)
    """
    if x_T.shape[0] != 1:
        raise ValueError(f"zero_order_search takes one pivot noise [1, ...], got {x_T.shape}")
    x0 = sampler(x_T)
    s0 = verifier(x0)[0]
    c, sn = jnp.cos(step), jnp.sin(step) * noise_std

    def round_(carry, r):
        pivot, best_x, best_s = carry
        z = sample_noise(jax.random.fold_in(key, r), (n_candidates,) + x_T.shape[1:], x_T.dtype)
        cand = c * pivot + sn * z
        xs = sampler(cand)
        ss = verifier(xs)
        j = jnp.argmax(ss)
        better = ss[j] > best_s
        pick = lambda v: jax.lax.dynamic_slice_in_dim(v, j, 1)  # noqa: E731
        pivot = jnp.where(better, pick(cand), pivot)
        best_x = jnp.where(better, pick(xs), best_x)
        best_s = jnp.where(better, ss[j], best_s)
        return (pivot, best_x, best_s), best_s

    (pivot, best_x, best_s), hist = jax.lax.scan(
        round_, (x_T, x0, s0), jnp.arange(n_rounds)
    )
    return SearchResult(best_x[0], best_s, pivot[0], hist)
