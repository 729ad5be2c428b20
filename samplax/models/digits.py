"""A small learned denoiser for scikit-learn's 8x8 digits: honest tests beyond analytic scores.

The model is a Flax (linen) MLP with a time embedding, trained by
``scripts/train_digits.py`` on the 1797 bundled digits (``sklearn.datasets.load_digits``,
offline), pixels scaled to ``[-1, 1]`` (64 dimensions). The checkpoint ships as package
data (``samplax/models/data/digits_denoiser.msgpack`` + ``.json``).

Parameterization: EDM preconditioning (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", Table 1) in the EDM view of any
schedule, ``x_tilde = x/alpha = x0 + sigma_tilde eps`` with ``sigma_tilde = sigma/alpha``,
centred on the per-pixel data mean ``mu``::

    D(x, t) = mu + c_skip (x_tilde - mu) + c_out F(c_in (x_tilde - mu), c_noise)
    c_skip = s_d^2 / (sigma_tilde^2 + s_d^2),  c_out = sigma_tilde s_d / sqrt(sigma_tilde^2 + s_d^2)
    c_in = 1 / sqrt(sigma_tilde^2 + s_d^2),    c_noise = log(sigma_tilde) / 4

All coefficients are written in ``x`` itself (``alpha``, ``sigma``), so nothing divides by
a vanishing ``alpha`` at high noise nor by ``sigma = 0`` at the data end. The network
sees only ``sigma_tilde``, so the same checkpoint is a denoiser for any schedule
(:class:`~samplax.schedules.VPLinear` by default). Training minimizes the EDM loss
``|F - (x0 - mu - c_skip (x_tilde - mu)) / c_out|^2``, i.e. the DDPM denoising objective
(Ho et al. 2020) with EDM's weighting ``1/c_out^2``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from importlib import resources

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from samplax.schedules.base import NoiseSchedule

DATA_DIM = 64
LAM_CLIP = 12.0  # |log sigma_tilde| beyond this is outside training; clip the embedding input
_DATA_PACKAGE = "samplax.models"
_DATA_DIR = "data"


# -- data ---------------------------------------------------------------------------------
def digits_data(split: str = "all", *, return_labels: bool = False):
    """The 8x8 digits as ``[n, 64]`` float64 in ``[-1, 1]`` (pixel / 8 - 1).

    Args:
        split: ``"all"`` (1797 digits; the denoiser's training set), ``"train"``
            (indices not divisible by 5; the classifier's training set) or
            ``"test"`` (every 5th digit, 360; held out from the classifier).
        return_labels: also return the integer labels ``[n]``.
    """
    x, y = _load_digits_arrays()
    idx = np.arange(x.shape[0])
    if split == "all":
        keep = idx >= 0
    elif split == "train":
        keep = idx % 5 != 0
    elif split == "test":
        keep = idx % 5 == 0
    else:
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    return (x[keep], y[keep]) if return_labels else x[keep]


@functools.lru_cache(maxsize=1)
def _load_digits_arrays():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = np.asarray(d.data, np.float64) / 8.0 - 1.0
    x.setflags(write=False)
    y = np.asarray(d.target, np.int32)
    y.setflags(write=False)
    return x, y


# -- network ------------------------------------------------------------------------------
def fourier_embedding(c, n_freqs: int, max_freq: float):
    """``[c, sin(f c), cos(f c)]`` for ``n_freqs`` geometric frequencies up to ``max_freq``."""
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_freq), n_freqs)).astype(c.dtype)
    arg = c[..., None] * freqs
    return jnp.concatenate([c[..., None], jnp.sin(arg), jnp.cos(arg)], axis=-1)


class DenoiserMLP(nn.Module):
    """``F(x_in, c_noise)``: a residual MLP whose blocks add a projection of a time embedding."""

    width: int = 192
    depth: int = 3
    emb_dim: int = 128
    n_freqs: int = 16
    max_freq: float = 32.0

    @nn.compact
    def __call__(self, x, c_noise):
        emb = fourier_embedding(c_noise, self.n_freqs, self.max_freq)
        emb = nn.silu(nn.Dense(self.emb_dim, name="emb_0")(emb))
        emb = nn.silu(nn.Dense(self.emb_dim, name="emb_1")(emb))
        h = nn.Dense(self.width, name="inp")(x)
        for i in range(self.depth):
            r = nn.Dense(self.width, name=f"block{i}_0")(nn.silu(nn.LayerNorm(name=f"ln{i}")(h)))
            r = r + nn.Dense(self.width, name=f"block{i}_emb")(emb)
            r = nn.Dense(self.width, name=f"block{i}_1")(nn.silu(r))
            h = h + r
        h = nn.silu(nn.LayerNorm(name="ln_out")(h))
        return nn.Dense(x.shape[-1], name="out", kernel_init=nn.initializers.zeros)(h)


def edm_preconditioning(alpha, sigma, sigma_data):
    """EDM coefficients (Karras et al. 2022, Table 1) written in ``x = alpha x_tilde``.

    Returns ``(c_in, c_skip, c_out)`` such that, with ``r = x - alpha mu``,
    ``D = mu + c_skip r + c_out F(c_in r, c_noise)`` is EDM's preconditioned denoiser
    at ``sigma_tilde = sigma/alpha``. Finite for ``alpha -> 0`` and for ``sigma = 0``
    (then ``D = x/alpha``) as long as not both vanish.
    """
    sd2 = sigma_data**2
    r2 = sigma**2 + alpha**2 * sd2
    c_in = jax.lax.rsqrt(r2)
    c_skip = alpha * sd2 / r2
    c_out = sigma * sigma_data * c_in
    return c_in, c_skip, c_out


def edm_c_noise(lam):
    """EDM's noise conditioning ``log(sigma_tilde)/4 = -lam/4``, clipped to stay finite."""
    return -0.25 * jnp.clip(lam, -LAM_CLIP, LAM_CLIP)


def apply_denoiser(model: DenoiserMLP, state, x, alpha, sigma, lam):
    """Preconditioned ``x0_hat`` for ``x = alpha x0 + sigma eps`` (all in ``x``'s dtype).

    ``alpha``, ``sigma``, ``lam`` are scalars or broadcast against ``x[..., :1]``
    (per-sample values carry a trailing axis of 1).
    """
    mu = state["data_mean"].astype(x.dtype)
    c_in, c_skip, c_out = edm_preconditioning(alpha, sigma, state["sigma_data"].astype(x.dtype))
    r = x - alpha * mu
    c_noise = jnp.broadcast_to(edm_c_noise(lam), x[..., :1].shape)[..., 0]
    f = model.apply({"params": state["params"]}, c_in * r, c_noise)
    return (mu + c_skip * r + c_out * f).astype(x.dtype)


def denoiser_from_state(model: DenoiserMLP, state, schedule: NoiseSchedule) -> Callable:
    """Wrap a trained state into samplax's ``D(x, t) -> x0_hat`` under ``schedule``.

    ``x``: ``[..., 64]`` (float32 or float64); ``t``: a scalar or one time per sample
    (``x.shape[:-1]``). The network runs as one jitted function shared by all such
    denoisers (weights and schedule are arguments, not constants baked into the
    program); inside an outer ``jit`` it is inlined.
    """

    def D(x, t):
        return _denoise_at(model, schedule, state, jnp.asarray(x), jnp.asarray(t))

    D.schedule = schedule  # samplax.sample checks it against the plan's
    return D


@functools.partial(jax.jit, static_argnums=0)
def _denoise_at(model, schedule, state, x, t):
    coef = [f(t).astype(x.dtype) for f in (schedule.alpha, schedule.sigma, schedule.lam)]
    if t.ndim:
        coef = [c[..., None] for c in coef]
    return apply_denoiser(model, state, x, *coef)


# -- checkpoints -----------------------------------------------------------------------
def checkpoint_path(name: str, suffix: str):
    """The packaged file ``samplax/models/data/{name}.{suffix}`` (a Traversable)."""
    return resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR, f"{name}.{suffix}")


def load_checkpoint(name: str) -> tuple[dict, dict]:
    """``(config, state)`` of a packaged checkpoint (flax msgpack + JSON config).

    The weights are NumPy arrays: callers cache them, and a ``jnp`` array made while
    a ``jit`` trace is active would be that trace's tracer, leaked into the cache.
    """
    config = json.loads(checkpoint_path(name, "json").read_text())
    state = serialization.msgpack_restore(checkpoint_path(name, "msgpack").read_bytes())
    return config, jax.tree.map(np.asarray, state)


def save_checkpoint(directory, name: str, config: dict, state) -> None:
    """Write ``{name}.msgpack`` (float32 arrays) and ``{name}.json`` into ``directory``."""
    import pathlib

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = jax.tree.map(lambda a: np.asarray(a, np.float32), state)
    (directory / f"{name}.msgpack").write_bytes(serialization.msgpack_serialize(state))
    (directory / f"{name}.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def denoiser_model(config: dict) -> DenoiserMLP:
    """The network described by a checkpoint's ``config["model"]``."""
    return DenoiserMLP(**config["model"])


@functools.lru_cache(maxsize=1)
def _denoiser_checkpoint():
    config, state = load_checkpoint("digits_denoiser")
    return denoiser_model(config), state


def load_digits_denoiser(schedule: NoiseSchedule | None = None) -> Callable:
    """The packaged digits denoiser ``D(x, t) -> x0_hat`` (offline, cached after first load).

    Args:
        schedule: the noise schedule that maps ``t`` to ``(alpha, sigma)``; default
            :class:`~samplax.schedules.VPLinear` (the model itself is conditioned on
            ``sigma_tilde`` only, so any schedule is valid).

    Returns:
        ``D(x, t)`` for ``x`` of shape ``[batch, 64]`` and ``t`` a scalar or ``[batch]``;
        the output has ``x``'s shape and dtype.
    """
    if schedule is None:
        from samplax.schedules.vp import VPLinear

        schedule = VPLinear()
    model, state = _denoiser_checkpoint()
    return denoiser_from_state(model, state, schedule)


class DigitsData:
    """The digits as a data model for :class:`~samplax.models.builtin.Problem`.

    Like :class:`~samplax.models.gaussian.GaussianMixture` it has ``dim``,
    ``denoiser(schedule)`` (here the learned one) and ``sample(key, n)`` (here real
    digits drawn with replacement); it has no ``component``, and its ``quality`` is the
    feature Fréchet distance to the digits
    (:func:`samplax.models.digits_features.frechet_distance`).
    """

    dim = DATA_DIM

    def denoiser(self, schedule: NoiseSchedule) -> Callable:
        return load_digits_denoiser(schedule)

    def sample(self, key, n: int):
        x = jnp.asarray(digits_data())
        return x[jax.random.randint(key, (n,), 0, x.shape[0])]

    def quality(self, x) -> dict:
        """``{"fd": ...}``: the feature Fréchet distance of samples ``x`` to the 1797
        digits (:func:`samplax.models.digits_features.frechet_distance`)."""
        from samplax.models.digits_features import frechet_distance

        return {"fd": frechet_distance(x, digits_data())}

    @property
    def fingerprint(self) -> str:
        """The packaged denoiser's checkpoint, hashed (see
        :func:`samplax.models.builtin.model_fingerprint`)."""
        return hashlib.sha256(checkpoint_path("digits_denoiser", "msgpack").read_bytes()
                              ).hexdigest()[:16]

    def __repr__(self) -> str:
        return "DigitsData()"
