"""Built-in problems: a noise schedule, a denoiser and its data, by name.

They make every command and notebook runnable offline: ``gmm2d`` (8 Gaussians on a
ring, for pictures), ``gmm64`` (the 64-dimensional benchmark mixture),
``gauss64`` (one anisotropic Gaussian, whose probability-flow map is closed form),
all with exact denoisers, and ``digits`` (a small learned denoiser for the 8x8
scikit-learn digits, :mod:`samplax.models.digits`; compare its samples with the
feature Fréchet distance of :mod:`samplax.models.digits_features`).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.gaussian import GaussianMixture, gaussian, random_mixture
from samplax.schedules.base import NoiseSchedule
from samplax.schedules.vp import VPLinear


class DataModel(Protocol):
    """What a :class:`Problem` needs of its data: a :class:`GaussianMixture` (exact
    denoiser) or a learned model such as :class:`samplax.models.digits.DigitsData`."""

    @property
    def dim(self) -> int: ...

    def denoiser(self, schedule: NoiseSchedule): ...

    def sample(self, key, n: int): ...


class Problem(NamedTuple):
    """A sampling problem: a schedule and a data model that gives its denoiser.

    ``data`` is any :class:`DataModel`; only the analytic ones (``GaussianMixture``)
    have exact denoisers, ``component`` and ``log_prob``. ``x_T(key, n)`` draws
    initial states at ``t_start`` (pure Gaussian noise of the marginal's scale, as a
    sampler would); the sampler should end at ``t_end``.
    """

    name: str
    schedule: NoiseSchedule
    data: DataModel
    t_start: float
    t_end: float

    @property
    def dim(self) -> int:
        return self.data.dim

    @property
    def denoiser(self):
        return self.data.denoiser(self.schedule)

    @property
    def fingerprint(self) -> str | None:
        """The data model's :func:`model_fingerprint`, recorded in search results."""
        return model_fingerprint(self.data)

    def x_T(self, key, n: int, dtype=None):
        dtype = dtype or jnp.result_type(float)
        std = self.schedule.marginal_std(self.t_start)
        return std * jax.random.normal(key, (n, self.dim), dtype)


def model_fingerprint(data) -> str | None:
    """A short hash that tells one data model (and so its denoiser) from another.

    A model that defines ``fingerprint`` (a string, e.g. a hash of its checkpoint)
    gives that; a pytree of arrays (a :class:`GaussianMixture`) hashes its arrays,
    floating ones rounded to float32 so that one model hashes the same with x64 on
    or off. Anything else has no fingerprint (``None``), and results searched for it
    are compared by name only.
    """
    own = getattr(data, "fingerprint", None)
    if own is not None:
        return str(own)
    leaves = jax.tree.leaves(data)
    if not leaves or not all(isinstance(v, (jax.Array, np.ndarray)) for v in leaves):
        return None
    h = hashlib.sha256()
    for v in leaves:
        v = np.asarray(v)
        v = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        h.update(repr((v.shape, str(v.dtype))).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


def _exact(build):
    """``build()`` run in float64 and cast to the default float: the same mixture, to
    its rounding, whether x64 is on or off (a float32 draw of the same key would be
    another mixture)."""
    with jax.enable_x64(True):
        mix = jax.tree.map(np.asarray, build())
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(float)), mix)


def _ring(n=8, radius=2.0, var=0.02):
    ang = 2 * jnp.pi * jnp.arange(n) / n
    means = radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
    return GaussianMixture.diagonal(jnp.ones(n), means, jnp.full((n,), var))


def _gmm64():
    # 8 well-separated components with anisotropic per-axis scales: low-NFE
    # solvers visibly switch components, high-NFE ones converge at their order.
    return random_mixture(jax.random.key(64), 64, 8, spread=0.5, scale=0.5)


def _gauss64():
    scales = jnp.exp(jnp.linspace(jnp.log(0.05), jnp.log(2.0), 64))
    return gaussian(jnp.zeros(64), scales**2)


def _digits():
    from samplax.models.digits import DigitsData  # imports flax: only when asked for

    return DigitsData()


_BUILDERS = {
    "gmm2d": lambda: Problem("gmm2d", VPLinear(), _exact(_ring), 1.0, 1e-3),
    "gmm64": lambda: Problem("gmm64", VPLinear(), _exact(_gmm64), 1.0, 1e-3),
    "gauss64": lambda: Problem("gauss64", VPLinear(), _exact(_gauss64), 1.0, 1e-3),
    "digits": lambda: Problem("digits", VPLinear(), _digits(), 1.0, 1e-3),
}


def builtin_problems() -> list[str]:
    return sorted(_BUILDERS)


def builtin(name: str) -> Problem:
    """A built-in problem by name (see :func:`builtin_problems`)."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown built-in model {name!r}; choose one of {builtin_problems()}"
        ) from None
