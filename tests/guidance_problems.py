"""Analytic problems for the guidance tests: the right answers are known in closed form.

- A two-class Gaussian mixture in 2-D (class = component) with exact conditional
  and unconditional denoisers, an exact noisy classifier ``p(y | x_t)`` and a
  conditional model ``model(x, t, label)`` (label 2 = null condition).
- A continuous-condition model ``emb_model(x, t, e)``: the exact denoiser of the
  mixture reweighted by ``exp(e_k)`` (``e = 0`` is unconditional), for CADS.
- A linear inverse problem ``y = A x0 + noise`` with a Gaussian prior and its
  closed-form posterior.
"""

import jax
import jax.numpy as jnp

from samplax.models import GaussianMixture, gaussian
from samplax.schedules import VPLinear

S = VPLinear()
PI = jnp.array([0.6, 0.4])
MEANS = jnp.array([[-0.6, 0.0], [0.6, 0.3]])
VARS = jnp.array([[0.5, 0.3], [0.4, 0.6]])
MIX = GaussianMixture.diagonal(PI, MEANS, VARS)
COMP = [gaussian(MEANS[k], VARS[k]) for k in range(2)]
NULL = 2


def logits(x, t):
    """``log pi_k + log N(x; alpha mu_k, C_k)``: the joint log density of (x_t, class)."""
    a, s = S.alpha(t), S.sigma(t)
    return jnp.log(PI) + jnp.stack([c.log_prob(x, a, s) for c in COMP], -1)


def _mix(x, t, extra):
    a, s = S.alpha(t), S.sigma(t)
    means = jnp.stack([c.denoise(x, a, s) for c in COMP], 1)  # [n, K, d]
    w = jax.nn.softmax(logits(x, t) + extra, -1)
    return jnp.einsum("nk,nkd->nd", w, means)


def model(x, t, label):
    """Exact conditional denoiser for integer labels; ``label == NULL`` is unconditional."""
    c = jnp.asarray(label)[:, None]
    mask = jnp.where((c == NULL) | (c == jnp.arange(2)), 0.0, -jnp.inf)
    return _mix(x, t, mask)


def emb_model(x, t, e):
    """Exact denoiser of the data reweighted by ``exp(e_k)``; ``e = 0``: unconditional."""
    return _mix(x, t, e)


def uncond(x, t):
    return MIX.denoiser(S)(x, t)


def cond(y):
    return COMP[y].denoiser(S)


def log_classifier(y):
    """The exact noisy classifier ``log p(y | x_t)``."""
    return lambda x, t: jax.nn.log_softmax(logits(x, t), -1)[:, y]


def class_prob(x0, y=1):
    """``p(y | x0)`` at the data level."""
    return MIX.responsibilities(x0, 1.0, 0.0)[:, y]


def rk4_flow(den, x_T, t0, t1, n):
    """Independent reference: RK4 on ``d x_tilde/d lam = D(alpha x_tilde, t) - x_tilde``."""
    lams = jnp.linspace(S.lam(t0), S.lam(t1), n + 1)

    def f(lam, y):
        t = S.t_of_lam(lam)
        return den(S.alpha(t) * y, t) - y

    def body(y, i):
        l0, l1 = lams[i], lams[i + 1]
        h = l1 - l0
        k1 = f(l0, y)
        k2 = f(l0 + h / 2, y + h / 2 * k1)
        k3 = f(l0 + h / 2, y + h / 2 * k2)
        k4 = f(l1, y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    y, _ = jax.lax.scan(body, x_T / S.alpha(t0), jnp.arange(n))
    return y * S.alpha(t1)


def inverse_problem(d=4, m=2, noise=0.1, seed=1):
    """Gaussian prior N(mu, Sigma), ``y = A x* + noise n``; returns the posterior too."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    L = jax.random.normal(k1, (d, d)) * 0.4
    sigma = L @ L.T + 0.3 * jnp.eye(d)
    mu = jnp.linspace(0.5, -0.3, d)
    prior = gaussian(mu, sigma)
    A = jax.random.normal(k2, (m, d))
    x_star = prior.sample(k3, 1)[0]
    y = A @ x_star + noise * jax.random.normal(k4, (m,))
    gain = sigma @ A.T @ jnp.linalg.inv(A @ sigma @ A.T + noise**2 * jnp.eye(m))
    post_mean = mu + gain @ (y - A @ mu)
    post_cov = sigma - gain @ A @ sigma
    return dict(prior=prior, A=A, y=y, noise=noise, post_mean=post_mean, post_cov=post_cov)
