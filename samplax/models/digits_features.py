"""A feature-space Fréchet distance for 8x8 digits (FID in miniature).

The Fréchet distance of Heusel et al. 2017 ("GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", the FID) between Gaussians fitted to two
feature sets, ``|mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^{1/2} S_y S_x^{1/2})^{1/2})``,
here with the penultimate layer of a small MLP classifier trained on the digits
(``scripts/train_digits.py``; packaged as ``samplax/models/data/digits_classifier.*``)
in place of Inception-v3.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.digits import load_checkpoint


class ClassifierMLP(nn.Module):
    """``x [..., 64] -> (logits [..., 10], features [..., feature_dim])``."""

    hidden: int = 256
    feature_dim: int = 64
    n_classes: int = 10

    @nn.compact
    def __call__(self, x, *, dropout: float = 0.0, key=None):
        h = nn.silu(nn.Dense(self.hidden, name="hidden")(x))
        if dropout:
            h = nn.Dropout(dropout, deterministic=False)(h, rng=key)
        feats = jnp.tanh(nn.Dense(self.feature_dim, name="features")(h))
        return nn.Dense(self.n_classes, name="logits")(feats), feats


@functools.lru_cache(maxsize=1)
def _classifier():
    config, state = load_checkpoint("digits_classifier")
    return ClassifierMLP(**config["model"]), state["params"]


@jax.jit
def _apply(params, x):
    model = _classifier()[0]
    return model.apply({"params": params}, x)


def digits_logits(x):
    """Class logits ``[..., 10]`` of the packaged classifier for digits in ``[-1, 1]``."""
    return _apply(_classifier()[1], jnp.asarray(x))[0]


def digits_features(x):
    """Penultimate-layer features ``[..., 64]`` (tanh units) of the packaged classifier."""
    return _apply(_classifier()[1], jnp.asarray(x))[1]


def classifier_accuracy(split: str = "test") -> float:
    """Accuracy of the packaged classifier on a split of :func:`.digits.digits_data`."""
    from samplax.models.digits import digits_data

    x, y = digits_data(split, return_labels=True)
    pred = np.argmax(np.asarray(digits_logits(x.astype(np.float32))), axis=-1)
    return float(np.mean(pred == y))


def gaussian_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features ``[n, k]``, in float64."""
    f = np.asarray(f, np.float64).reshape(-1, np.shape(f)[-1])
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def psd_sqrt(a) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by ``eigh`` (negative rounding clipped)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between ``N(mu1, s1)`` and ``N(mu2, s2)`` (Heusel et al. 2017).

    ``tr((s1 s2)^{1/2})`` is computed as ``sum sqrt(eig(s1^{1/2} s2 s1^{1/2}))`` with the
    symmetric product symmetrized and ``eigh`` throughout (float64), so there are no
    complex parts to discard as with ``scipy.linalg.sqrtm`` on the non-symmetric
    ``s1 s2``, and singular covariances need no regularizing offset.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    r1 = psd_sqrt(s1)
    m = r1 @ (0.5 * (s2 + s2.T)) @ r1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = np.sum(np.sqrt(np.clip(w, 0.0, None)))
    fd = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))


def frechet_distance(x, y, features: Callable | None = digits_features) -> float:
    """Fréchet distance between sample sets ``x`` and ``y`` in a feature space.

    Args:
        x, y: samples ``[n, 64]`` and ``[m, 64]`` (digits in ``[-1, 1]``).
        features: map applied to both sets before fitting Gaussians; default the
            digits classifier's penultimate layer; ``None`` for raw pixels.

    Returns:
        The FD as a Python float (Heusel et al. 2017). It is biased upwards for finite
        samples: compare numbers computed at the same sample sizes.
    """
    if features is not None:
        x, y = features(x), features(y)
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))
