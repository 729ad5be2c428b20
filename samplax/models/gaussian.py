"""Analytic data distributions with exact denoisers: Gaussians and Gaussian mixtures.

For data ``x0 ~ sum_k pi_k N(mu_k, Sigma_k)`` the noisy marginal at time ``t`` is
``sum_k pi_k N(alpha mu_k, C_k)`` with ``C_k = alpha^2 Sigma_k + sigma^2 I``, and the
exact denoiser (posterior mean, Tweedie) is

    D(x, t) = sum_k w_k(x) [mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k)],
    w_k(x) ∝ pi_k N(x; alpha mu_k, C_k).

Covariances are stored by eigendecomposition ``Sigma_k = U_k diag(s_k) U_k^T`` so
that ``C_k^{-1}`` and ``log det C_k`` cost O(d^2) and stay exact for singular
``Sigma_k`` (point masses) while ``sigma > 0``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.schedules.base import NoiseSchedule


class GaussianMixture(eqx.Module):
    """A mixture of Gaussians in ``R^d`` with an exact denoiser.

    Build with :meth:`diagonal` or :meth:`full`. ``eigvecs`` is ``None`` for
    axis-aligned (diagonal) covariances.
    """

    log_weights: jax.Array  # [K]
    means: jax.Array  # [K, d]
    eigvals: jax.Array  # [K, d]
    eigvecs: jax.Array | None  # [K, d, d] or None

    @classmethod
    def diagonal(cls, weights, means, variances) -> GaussianMixture:
        """Mixture with ``Sigma_k = diag(variances[k])``.

        ``variances``: a scalar, ``[K]`` (isotropic per component) or ``[K, d]``.
        """
        means = jnp.atleast_2d(jnp.asarray(means, dtype=float))
        K, d = means.shape
        weights = _check_weights(weights, K)
        variances = jnp.asarray(variances, float)
        if variances.ndim == 1:  # one isotropic variance per component
            variances = variances[:, None]
        variances = jnp.broadcast_to(variances, (K, d))
        if bool(jnp.any(variances < 0)):
            raise ValueError("variances must be non-negative")
        return cls(jnp.log(weights), means, variances, None)

    @classmethod
    def full(cls, weights, means, covs) -> GaussianMixture:
        """Mixture with full covariance matrices ``covs[k]`` (symmetric PSD)."""
        means = jnp.atleast_2d(jnp.asarray(means, dtype=float))
        K, d = means.shape
        weights = _check_weights(weights, K)
        covs = jnp.broadcast_to(jnp.asarray(covs, float), (K, d, d))
        s, U = jnp.linalg.eigh(0.5 * (covs + jnp.swapaxes(covs, -1, -2)))
        if bool(jnp.any(s < -1e-10 * jnp.max(jnp.abs(s)))):
            raise ValueError("covariances must be positive semi-definite")
        return cls(jnp.log(weights), means, jnp.clip(s, 0.0), U)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # -- in the eigenbasis --------------------------------------------------------
    def _to_eig(self, v):  # v: [..., K, d] -> coordinates in each component's basis
        if self.eigvecs is None:
            return v
        return jnp.einsum("...kd,kde->...ke", v, self.eigvecs)

    def _from_eig(self, v):
        if self.eigvecs is None:
            return v
        return jnp.einsum("...ke,kde->...kd", v, self.eigvecs)

    def _parts(self, x, alpha, sigma):
        """Per-component log-likelihood terms and posterior means; x: [..., d]."""
        r = x[..., None, :] - alpha * self.means  # [..., K, d]
        r_eig = self._to_eig(r)
        c = alpha**2 * self.eigvals + sigma**2  # [K, d] eigenvalues of C_k
        log_norm = -0.5 * (jnp.sum(r_eig**2 / c, -1) + jnp.sum(jnp.log(c), -1)
                           + self.dim * jnp.log(2 * jnp.pi))
        mean_k = self.means + self._from_eig(alpha * self.eigvals / c * r_eig)
        return self.log_weights + log_norm, mean_k

    def denoise(self, x, alpha, sigma):
        """Exact ``E[x0 | x_t = x]`` for ``x_t = alpha x0 + sigma eps``."""
        logits, mean_k = self._parts(x, alpha, sigma)
        w = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("...k,...kd->...d", w, mean_k)

    def responsibilities(self, x, alpha, sigma):
        """Posterior component probabilities ``p(k | x_t = x)``, ``[..., K]``."""
        logits, _ = self._parts(x, alpha, sigma)
        return jax.nn.softmax(logits, axis=-1)

    def log_prob(self, x, alpha=1.0, sigma=0.0):
        """Log density of ``x_t`` (of the data itself for the defaults)."""
        logits, _ = self._parts(x, alpha, sigma)
        return jax.nn.logsumexp(logits, axis=-1)

    def component(self, x0):
        """The most likely component of data points ``x0`` (for wrong-mode shares)."""
        return jnp.argmax(self.responsibilities(x0, 1.0, 1e-6), axis=-1)

    def denoiser(self, schedule: NoiseSchedule):
        """The exact denoiser ``D(x, t)`` under ``schedule`` (samplax's model signature)."""

        def D(x, t):
            t = jnp.asarray(t)
            # per-sample times arrive as [batch]; broadcast against the component and
            # feature axes of the per-component terms ([..., K, d])
            alpha = schedule.alpha(t)[..., None, None] if t.ndim else schedule.alpha(t)
            sigma = schedule.sigma(t)[..., None, None] if t.ndim else schedule.sigma(t)
            return self.denoise(x, alpha, sigma)

        D.schedule = schedule  # samplax.sample checks it against the plan's
        return D

    def sample(self, key, n: int):
        """``n`` exact data samples, ``[n, d]``."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
        z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
        z = z * jnp.sqrt(self.eigvals[comp])
        if self.eigvecs is not None:
            z = jnp.einsum("nke,ne->nk", self.eigvecs[comp], z)
        return self.means[comp] + z

    def prior_sample(self, key, n: int, schedule: NoiseSchedule, t=None):
        """Exact samples of ``x_t`` (default ``t = schedule.t_max``), ``[n, d]``."""
        t = schedule.t_max if t is None else t
        k0, k1 = jax.random.split(key)
        eps = jax.random.normal(k1, (n, self.dim), self.means.dtype)
        return schedule.alpha(t) * self.sample(k0, n) + schedule.sigma(t) * eps


def gaussian(mean, cov) -> GaussianMixture:
    """Gaussian data ``N(mean, cov)`` (``cov`` a scalar, a vector of variances or a matrix)."""
    mean = jnp.atleast_1d(jnp.asarray(mean, float))
    cov = jnp.asarray(cov, float)
    if cov.ndim == 2:
        return GaussianMixture.full(jnp.ones(1), mean[None], cov[None])
    var = jnp.broadcast_to(cov, mean.shape)
    return GaussianMixture.diagonal(jnp.ones(1), mean[None], var[None])


def point_mass(x0) -> GaussianMixture:
    """Data concentrated on one point: every data-form first-order solver is exact."""
    x0 = jnp.atleast_1d(jnp.asarray(x0, float))
    return GaussianMixture.diagonal(jnp.ones(1), x0[None], jnp.zeros((1,) + x0.shape))


def gaussian_flow(data: GaussianMixture, schedule: NoiseSchedule, x_s, s, t):
    """Closed-form probability-flow ODE map from time ``s`` to ``t`` for Gaussian data.

    ``x_t = alpha_t mu + C_t^{1/2} C_s^{-1/2} (x_s - alpha_s mu)`` with
    ``C = alpha^2 Sigma + sigma^2 I`` (the flow is linear and commutes with the
    eigenbasis of ``Sigma``).
    """
    if data.n_components != 1:
        raise ValueError("gaussian_flow needs single-Gaussian data")
    mu, lam_vals = data.means[0], data.eigvals[0]
    a_s, s_s = schedule.alpha(s), schedule.sigma(s)
    a_t, s_t = schedule.alpha(t), schedule.sigma(t)
    ratio = jnp.sqrt((a_t**2 * lam_vals + s_t**2) / (a_s**2 * lam_vals + s_s**2))
    r = x_s - a_s * mu
    if data.eigvecs is None:
        return a_t * mu + ratio * r
    U = data.eigvecs[0]
    return a_t * mu + ((r @ U) * ratio) @ U.T


def _check_weights(weights, K):
    w = jnp.broadcast_to(jnp.asarray(weights, float), (K,))
    if bool(jnp.any(w <= 0)):
        raise ValueError("mixture weights must be positive")
    return w / jnp.sum(w)


def random_mixture(key, dim: int, n_components: int, *, spread=2.0, scale=0.3,
                   diagonal=True) -> GaussianMixture:
    """A reproducible random mixture: means ~ spread*N(0, I/d)·sqrt(d), per-axis scales.

    Used by the tests and benchmarks (e.g. the 64-dimensional benchmark problem).
    """
    km, kv, kw, ku = jax.random.split(key, 4)
    means = spread * jax.random.normal(km, (n_components, dim))
    var = (scale * jnp.exp(0.3 * jax.random.normal(kv, (n_components, dim)))) ** 2
    weights = jnp.exp(0.3 * jax.random.normal(kw, (n_components,)))
    if diagonal:
        return GaussianMixture.diagonal(weights, means, var)
    Q, _ = jnp.linalg.qr(jax.random.normal(ku, (n_components, dim, dim)))
    covs = jnp.einsum("kde,ke,kfe->kdf", Q, var, Q)
    return GaussianMixture.full(weights, means, covs)
