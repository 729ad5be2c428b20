"""Error and distribution metrics used by tests, benchmarks, search and the CLI."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def per_sample_rmse(x, ref):
    """RMSE of each sample against its reference, over all non-batch axes."""
    axes = tuple(range(1, jnp.ndim(x)))
    return jnp.sqrt(jnp.mean((x - ref) ** 2, axis=axes))


def error_summary(x, ref, data=None) -> dict:
    """Median / mean per-sample RMSE and, for a mixture, the wrong-component share;
    for a data model with its own quality measure (``data.quality(x) -> {name:
    value}``, e.g. the digits' feature Fréchet distance) that too.

    The mean is dominated by the few samples that end in another mixture
    component, so the median is the headline number (REFERENCES.md, "Honest
    evaluation"); ``wrong_component`` reports those switches separately.
    """
    e = np.asarray(per_sample_rmse(x, ref))
    out = {"median_rmse": float(np.median(e)), "mean_rmse": float(np.mean(e))}
    if data is not None and hasattr(data, "component"):
        wrong = np.asarray(data.component(x) != data.component(ref))
        out["wrong_component"] = float(np.mean(wrong))
    if data is not None and hasattr(data, "quality"):
        out.update(data.quality(x))
    return out


# --------------------------------------------------------------------------------------
# Distribution metrics (stochastic samplers): samples against exact data samples
# --------------------------------------------------------------------------------------


def frechet_distance(x, y) -> float:
    """Fréchet distance between Gaussians fitted to two sample sets ``[n, d]`` (FID's formula).

    ``|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^{1/2} C_y C_x^{1/2})^{1/2})``, computed in
    float64 NumPy with symmetric square roots. Its value between two independent
    exact sample sets of size ``n`` (the noise floor) is about ``(tr C)^2``-scaled
    ``O(d/n)``: report it next to any measurement.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.atleast_2d(np.cov(x.T)), np.atleast_2d(np.cov(y.T))
    rx = _sqrtm_psd(cx)
    cross = _sqrtm_psd(rx @ cy @ rx)
    return float(np.sum((mx - my) ** 2) + np.trace(cx) + np.trace(cy) - 2.0 * np.trace(cross))


def _sqrtm_psd(c):
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _sq_dists(a, b):
    return jnp.maximum(
        jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T, 0.0
    )


def mmd2(x, y, bandwidth=None) -> float:
    """Unbiased squared MMD with a Gaussian kernel ``exp(-|u - v|^2 / (2 bw^2))``.

    ``bandwidth`` defaults to the median pairwise distance of the pooled samples
    (median heuristic). Gretton et al. 2012, "A kernel two-sample test", eq. 3.
    """
    return float(_mmd2_perm(jnp.asarray(x), jnp.asarray(y), bandwidth, 0, jax.random.key(0))[0])


@functools.partial(jax.jit, static_argnums=(3,))
def _mmd2_perm(x, y, bandwidth, n_perm, key):
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    z = jnp.concatenate([x, y], 0)
    d2 = _sq_dists(z, z)
    n, m = x.shape[0], y.shape[0]
    if bandwidth is None:
        iu = np.triu_indices(n + m, 1)
        bw2 = jnp.median(d2[iu])  # median heuristic
    else:
        bw2 = jnp.asarray(bandwidth) ** 2
    k = jnp.exp(-d2 / (2.0 * bw2))
    k = k - jnp.diag(jnp.diag(k))  # unbiased: drop the diagonal

    k1 = jnp.sum(k, axis=1)  # K 1
    s11 = jnp.sum(k1)

    def stats(labs):  # labs: [P, n + m], 1 for the first set; one GEMM for all
        a = labs.astype(k.dtype)
        ka = a @ k  # [P, n + m] (K symmetric)
        aka = jnp.sum(ka * a, -1)
        ak1 = a @ k1
        kxx = aka / (n * (n - 1))
        kyy = (s11 - 2.0 * ak1 + aka) / (m * (m - 1))
        kxy = (ak1 - aka) / (n * m)
        return kxx + kyy - 2.0 * kxy

    lab0 = jnp.concatenate([jnp.ones(n), jnp.zeros(m)])
    obs = stats(lab0[None])[0]
    if not n_perm:
        return obs, None
    perms = jax.vmap(lambda kk: jax.random.permutation(kk, lab0))(jax.random.split(key, n_perm))
    return obs, stats(perms)


def mmd_test(x, y, *, n_perm: int = 200, key=None, bandwidth=None) -> dict:
    """Kernel two-sample test (Gretton et al. 2012) with a permutation threshold.

    Returns ``{"mmd2": observed unbiased MMD^2, "p_value": (1 + #{null >= obs})/(1 +
    n_perm)}`` under ``n_perm`` random relabelings of the pooled samples.
    """
    key = jax.random.key(0) if key is None else key
    obs, null = _mmd2_perm(jnp.asarray(x), jnp.asarray(y), bandwidth, n_perm, key)
    p = (1.0 + float(jnp.sum(null >= obs))) / (1.0 + n_perm)
    return {"mmd2": float(obs), "p_value": p}
