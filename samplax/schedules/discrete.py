"""Discrete-time VP schedules (DDPM, Stable Diffusion, ...) seen in continuous time.

A discrete model is trained on ``N`` noise levels ``alphas_cumprod[n]``,
``n = 0..N-1``, and takes the integer label ``n`` as its time input. Following
the official DPM-Solver code (Lu et al. 2022, ``NoiseScheduleVP('discrete')``),
samplax puts level ``n`` at the continuous time ``t_n = (n + 1)/N`` and
interpolates ``log alpha = 1/2 log alphas_cumprod`` piecewise linearly in ``t``,
so any continuous-time solver can run on a discrete model; the network gets
``label(t) = N t - 1``.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule, check_int_arg, real_values
from samplax.schedules.vp import _log_sigma_from_log_alpha


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


class DiscreteVP(NoiseSchedule):
    """A VP schedule given by ``N`` discrete noise levels, interpolated in time.

    ``log alpha`` is piecewise linear through the knots ``(t_n, log alpha_n)``,
    ``t_n = (n + 1)/N``, exactly as DPM-Solver's ``NoiseScheduleVP('discrete')``
    on ``[1/N, 1]``. Below ``1/N`` DPM-Solver extrapolates the first segment, which
    gives ``alpha > 1`` (and NaN) for small ``t``; samplax instead adds the knot
    ``(0, log 1)`` — the clean data, diffusers' ``set_alpha_to_one`` /
    ``final_sigmas_type="zero"`` — so ``t = 0`` is reachable with ``sigma = 0``.
    Past ``t = 1`` the last segment is extrapolated (as DPM-Solver does), which
    only a time shift (:func:`~samplax.schedules.shifted`) reaches.

    Zero terminal SNR (``alphas_cumprod[-1] = 0``, see :meth:`zero_terminal_snr`):
    on the last segment ``alpha`` (not ``log alpha``) is interpolated linearly, so
    ``lam`` is finite on ``[0, 1)`` and ``-inf`` only at ``t = 1``. The default
    ``t_max`` is then ``(N - 1)/N`` (label ``N - 2``, the last level with finite
    SNR) instead of ``1``, because a solver cannot start at ``lam = -inf``;
    ``t_hi`` stays ``1``.

    Build with ``DiscreteVP(betas)``, ``DiscreteVP(alphas_cumprod=...)`` or the
    constructors :meth:`linear`, :meth:`scaled_linear`, :meth:`squaredcos_cap_v2`.

    Attributes:
        log_alphas: ``[N]`` ``log sqrt(alphas_cumprod)`` at ``t_n = (n + 1)/N``.
        t_min: default end of sampling, ``1/N`` (label 0), as in DPM-Solver.
        t_max: default start, ``1`` (label ``N - 1``), or ``(N - 1)/N`` at zero SNR.
    """

    log_alphas: jax.Array
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, betas=None, *, alphas_cumprod=None, t_min=None, t_max=None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas and alphas_cumprod")
        if betas is not None:
            real_values("DiscreteVP", "betas", betas, finite=False, what="an array of numbers")
            betas = _as_float(betas)
            _check_betas(betas)
            log_alphas = 0.5 * jnp.cumsum(jnp.log1p(-betas))
        else:
            real_values("DiscreteVP", "alphas_cumprod", alphas_cumprod, finite=False,
                        what="an array of numbers")
            ac = _as_float(alphas_cumprod)
            _check_alphas_cumprod(ac)
            log_alphas = 0.5 * jnp.log(ac)
        n = log_alphas.shape[0]
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if v is not None:
                real_values("DiscreteVP", name, v)
        self.log_alphas = log_alphas
        self.t_min = 1.0 / n if t_min is None else float(t_min)
        if t_max is None:
            zero_snr = _is_concrete(log_alphas) and bool(np.isneginf(np.asarray(log_alphas[-1])))
            t_max = (n - 1) / n if zero_snr else 1.0
        self.t_max = float(t_max)
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"DiscreteVP: need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, "
                             f"t_max={self.t_max}")

    # -- constructors (diffusers' beta_schedule names) -----------------------------------
    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw):
        """DDPM's linear betas (Ho et al. 2020, sec. 4): ``linspace(1e-4, 0.02, 1000)``."""
        n = _check_levels("linear", n)
        return cls(np.linspace(beta_start, beta_end, n), **kw)

    @classmethod
    def scaled_linear(cls, n: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012, **kw):
        """Stable Diffusion's betas: linear in ``sqrt(beta)`` from 0.00085 to 0.012."""
        n = _check_levels("scaled_linear", n)
        return cls(np.linspace(beta_start**0.5, beta_end**0.5, n) ** 2, **kw)

    @classmethod
    def squaredcos_cap_v2(cls, n: int = 1000, max_beta: float = 0.999, s: float = 0.008, **kw):
        """Nichol & Dhariwal (2021, eq. 17) discretized, betas capped at ``max_beta``.

        ``beta_i = min(1 - abar((i + 1)/N)/abar(i/N), max_beta)`` with
        ``abar(u) = cos((u + s)/(1 + s) pi/2)^2`` (diffusers' ``squaredcos_cap_v2``).
        """
        n = _check_levels("squaredcos_cap_v2", n)
        u = np.arange(n + 1) / n
        abar = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
        return cls(np.minimum(1.0 - abar[1:] / abar[:-1], max_beta), **kw)

    # -- the discrete grid --------------------------------------------------------------
    @property
    def t_hi(self) -> float:
        return 1.0

    @property
    def n(self) -> int:
        """Number of training noise levels ``N``."""
        return self.log_alphas.shape[0]

    @property
    def alphas_cumprod(self):
        """``[N]`` ``alpha_bar_n = alpha(t_n)^2``."""
        return jnp.exp(2.0 * self.log_alphas)

    @property
    def betas(self):
        """``[N]`` ``beta_n = 1 - alpha_bar_n / alpha_bar_{n-1}`` (``alpha_bar_{-1} = 1``)."""
        return -jnp.expm1(2.0 * jnp.diff(_knots(self.log_alphas)))

    def label(self, t):
        """The network's time input at ``t``: ``N t - 1``, the label ``n`` at ``t_n``.

        DPM-Solver's ``model_wrapper`` feeds ``(t - 1/N) * 1000``, the same for
        ``N = 1000``; samplax scales by ``N`` so that labels are ``0..N-1``.
        Non-integer between the knots, as the solvers visit any time.
        """
        return jnp.asarray(t) * self.n - 1.0

    def t_of_label(self, label):
        """Inverse of :meth:`label`: ``t = (label + 1)/N``."""
        return (_as_float(label) + 1.0) / self.n

    def zero_terminal_snr(self, terminal_alphas_cumprod: float = 0.0) -> DiscreteVP:
        """Rescaled to zero terminal SNR (Lin et al. 2024, "Common diffusion noise
        schedules and sample steps are flawed", alg. 1).

        ``sqrt(alpha_bar)`` is shifted so the last level is 0 and scaled so the first
        is unchanged. ``terminal_alphas_cumprod > 0`` then sets the last level to
        that value instead (diffusers' Euler scheduler uses ``2**-24``) so that a
        sampler may start at ``t = 1`` with finite SNR. Returns a new schedule;
        its ``t_max`` is ``(N - 1)/N`` when the terminal SNR is exactly zero.
        """
        sa = _rescale_sqrt_alphas_cumprod(jnp.exp(self.log_alphas))
        ac = sa**2
        if terminal_alphas_cumprod:
            ac = ac.at[-1].set(terminal_alphas_cumprod)
        return DiscreteVP(alphas_cumprod=ac, t_min=self.t_min)

    # -- continuous view ----------------------------------------------------------------
    # Each method is one compiled call: eagerly, its dozen elementwise ops would
    # otherwise compile one by one for every new shape of t.
    def _knots(self):
        return _knots(self.log_alphas)

    def log_alpha(self, t):
        return _interp(self.log_alphas, _as_float(t), "log_alpha")

    def alpha(self, t):
        # Overridden so that alpha(1) = 0 has a finite slope at zero terminal SNR
        # (exp(log alpha) would give 0 * inf there).
        return _interp(self.log_alphas, _as_float(t), "alpha")

    def log_sigma(self, t):
        return _interp(self.log_alphas, _as_float(t), "log_sigma")

    def lam(self, t):
        return _interp(self.log_alphas, _as_float(t), "lam")

    def t_of_lam(self, lam):
        """Closed-form inverse: ``log alpha = -1/2 log(1 + e^{-2 lam})``, then the
        piecewise-linear interpolation inverted on its segment.

        Below ``lam(1)`` (finite terminal SNR) the last segment is extrapolated, as
        :meth:`log_alpha` and DPM-Solver's ``interpolate_fn`` do, so the inverse stays
        exact there (a time shift may reach it); ``t_of_lam(-inf)`` is then ``+inf``.
        """
        return _inverse(self.log_alphas, _as_float(lam))


def _knots(log_alphas):
    # log alpha at t = j/N, j = 0..N: the clean-data knot (0, 0), then the levels.
    return jnp.concatenate([jnp.zeros((1,), log_alphas.dtype), log_alphas])


@functools.partial(jax.jit, static_argnames="what")
def _interp(log_alphas, t, what):
    """``what`` in {log_alpha, alpha, log_sigma, lam} of the interpolated schedule."""
    la = _knots(log_alphas)
    n = log_alphas.shape[0]
    u = t * n
    j = jnp.clip(jnp.floor(u), 0, n - 1).astype(jnp.int32)
    a, b = la[j], la[j + 1]
    w = u - j
    # Only the last knot may be -inf (zero terminal SNR). There alpha itself is
    # interpolated linearly: alpha = e^a (1 - w). Every branch sees only inputs it is
    # finite on (double where), so neither values nor gradients turn NaN.
    finite = jnp.isfinite(b)
    b = jnp.where(finite, b, a - 1.0)
    wz = jnp.where(finite, 0.5, jnp.where(w <= 1.0, w, 1.0))  # capped at t = 1
    la_lin = a + w * (b - a)
    log_alpha = jnp.where(finite, la_lin, a + jnp.log1p(-wz))
    if what == "log_alpha":
        return log_alpha
    if what == "alpha":
        return jnp.where(finite, jnp.exp(la_lin), jnp.exp(a) * (1.0 - wz))
    # zero-SNR segment: sigma^2 = 1 - (e^a (1 - w))^2, smooth at w = 1
    log_sigma = jnp.where(finite, _log_sigma_from_log_alpha(la_lin),
                          0.5 * jnp.log1p(-((jnp.exp(a) * (1.0 - wz)) ** 2)))
    return log_sigma if what == "log_sigma" else log_alpha - log_sigma


@jax.jit
def _inverse(log_alphas, lam):
    la_t = -0.5 * jax.nn.softplus(-2.0 * lam)  # log alpha, VP
    la = _knots(log_alphas)
    n = log_alphas.shape[0]
    j = jnp.clip(jnp.searchsorted(-la, -la_t, side="right") - 1, 0, n - 1)
    a, b = la[j], la[j + 1]
    finite = jnp.isfinite(b)
    b_lin = jnp.where(finite, b, a - 1.0)
    w_lin = (la_t - a) / (b_lin - a)
    w_log = -jnp.expm1(jnp.where(finite, a, la_t) - a)
    w = jnp.maximum(jnp.where(finite, w_lin, w_log), 0.0)
    return (j + w) / n


def rescale_zero_terminal_snr(betas):
    """Lin et al. (2024) alg. 1 on a beta array: betas whose last ``alpha_bar`` is 0.

    The last returned beta is exactly 1. ``DiscreteVP(rescale_zero_terminal_snr(b))``
    equals ``DiscreteVP(b).zero_terminal_snr()`` up to round-off.
    """
    betas = _as_float(betas)
    sa = _rescale_sqrt_alphas_cumprod(jnp.exp(0.5 * jnp.cumsum(jnp.log1p(-betas))))
    ac = sa**2
    alphas = jnp.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas


def _rescale_sqrt_alphas_cumprod(sa):
    a0, a_last = sa[0], sa[-1]
    out = (sa - a_last) * (a0 / (a0 - a_last))
    # Pin both ends exactly: first unchanged, last zero.
    return out.at[0].set(a0).at[-1].set(0.0)


def _check_levels(constructor: str, n) -> int:
    """The number of training noise levels of a named constructor: an integer >= 2."""
    return check_int_arg(f"DiscreteVP.{constructor}", "n (the number of training steps)",
                         n, lo=2)


def _check_betas(betas):
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must be a 1-D array of at least 2 levels, got {betas.shape}")
    if _is_concrete(betas):
        b = np.asarray(betas)
        if not (np.all(b > 0) and np.all(b <= 1) and np.all(b[:-1] < 1)):
            raise ValueError(
                "betas must lie in (0, 1], with beta = 1 (zero terminal SNR) only at the "
                f"last level; got min {b.min():.3g}, max {b.max():.3g}"
            )


def _check_alphas_cumprod(ac):
    if ac.ndim != 1 or ac.shape[0] < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 levels, got {ac.shape}")
    if _is_concrete(ac):
        a = np.asarray(ac)
        if not (a[0] < 1 and np.all(np.diff(a) < 0) and np.all(a[:-1] > 0) and a[-1] >= 0):
            raise ValueError(
                "alphas_cumprod must be strictly decreasing in (0, 1), with 0 only at "
                "the last level"
            )
