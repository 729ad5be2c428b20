"""The noise-schedule interface: ``x_t = alpha(t) x0 + sigma(t) eps``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------
# Argument checks shared by the constructors (schedules, step schedules, solvers,
# guidance). They look at values only when there are values: a tracer (inside
# jit/vmap/grad) is let through unchecked, so every constructor stays traceable.
# --------------------------------------------------------------------------------------


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a JAX tracer): checks on values are possible."""
    return not isinstance(x, jax.core.Tracer)


def describe(x) -> str:
    """A short ``value (type)`` for error messages."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return f"PRNG key array of shape {tuple(x.shape)}"
    if isinstance(x, jax.Array | np.ndarray) and is_concrete(x):
        if x.ndim == 0:
            return f"{np.asarray(x).item()!r} (0-d array, {x.dtype})"
        text = np.array2string(np.asarray(x), threshold=6, precision=4)
        return f"{text} (array of shape {tuple(x.shape)}, {x.dtype})"
    text = repr(x)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(x).__name__})"


def _is_real_dtype(dtype) -> bool:
    return any(jnp.issubdtype(dtype, k) for k in (jnp.bool_, jnp.integer, jnp.floating))


def real_values(owner: str, name: str, x, *, finite: bool = True,
                what: str | None = None):
    """``x`` as a float64 NumPy array after checking it holds real numbers.

    ``TypeError`` for anything else (a string, ``None``, a complex number),
    ``ValueError`` for a non-finite value when ``finite``. Returns ``None`` when
    ``x`` is traced: its values are unknown until run time.
    """
    what = what or ("a finite number" if finite else "a number")
    prefix = f"{owner}: " if owner else ""
    if not is_concrete(x):
        return None
    if isinstance(x, str | bytes) or x is None or callable(x):
        raise TypeError(f"{prefix}{name} must be {what}, got {describe(x)}")
    try:
        a = np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except Exception as e:  # noqa: BLE001 -- ragged lists, odd objects
        raise TypeError(f"{prefix}{name} must be {what}, got {describe(x)}") from e
    if not _is_real_dtype(a.dtype):
        raise TypeError(f"{prefix}{name} must be {what}, got {describe(x)}")
    a = a.astype(np.float64)
    if finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{prefix}{name} must be {what}, got {describe(x)}")
    return a


def check_int_arg(owner: str, name: str, x, lo: int | None = None) -> int:
    """``x`` as a Python int: an ``int`` or NumPy integer (not a bool), ``>= lo``."""
    prefix = f"{owner}: " if owner else ""
    bound = "" if lo is None else f" >= {lo}"
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
        raise TypeError(f"{prefix}{name} must be an integer{bound}, got {describe(x)}")
    if lo is not None and x < lo:
        raise ValueError(f"{prefix}{name} must be an integer{bound}, got {x!r}")
    return int(x)


def check_time_range(owner: str, t_min, t_max, t_hi=None) -> None:
    """``0 <= t_min < t_max`` (``<= t_hi`` when the schedule ends there), finite."""
    for name, v in (("t_min", t_min), ("t_max", t_max)):
        real_values(owner, name, v)
    if not 0.0 <= float(t_min) < float(t_max):
        raise ValueError(f"{owner}: need 0 <= t_min < t_max, got t_min={t_min!r}, "
                         f"t_max={t_max!r}")
    if t_hi is not None and float(t_max) > t_hi:
        raise ValueError(f"{owner}: t_max must be at most {t_hi} (the schedule ends there), "
                         f"got t_max={t_max!r}")


class NoiseSchedule(eqx.Module):
    """A forward process ``x_t = alpha(t) x0 + sigma(t) eps`` on ``[t_min, t_max]``.

    Subclasses define ``log_alpha(t)`` and ``log_sigma(t)`` (and may override
    ``t_of_lam`` with a closed form). ``lam(t) = log(alpha/sigma)`` must be
    strictly decreasing in ``t``: sampling runs from ``t_max`` (noise) down to
    ``t_min``. ``t_min``/``t_max`` are the default ends of a sampling run;
    ``t_lo``/``t_hi`` bound where the schedule is defined at all.
    """

    # Subclasses declare (with defaults) ``t_min`` and ``t_max`` as static fields.
    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    # -- to implement -----------------------------------------------------------
    def log_alpha(self, t):
        raise NotImplementedError

    def log_sigma(self, t):
        raise NotImplementedError

    # -- derived ------------------------------------------------------------------
    @property
    def t_lo(self) -> float:
        """Smallest time the schedule is defined at (may have sigma = 0 there)."""
        return 0.0

    @property
    def t_hi(self) -> float:
        """Largest time the schedule is defined at."""
        return self.t_max

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.exp(self.log_sigma(t))

    def lam(self, t):
        """Half log-SNR ``log(alpha/sigma)``; ``+inf`` where ``sigma = 0``."""
        return self.log_alpha(t) - self.log_sigma(t)

    def t_of_lam(self, lam):
        """Inverse of :meth:`lam` by bisection on ``[t_lo, t_hi]`` (jittable).

        60 bisection steps reach float64 resolution on any bracket; the result
        is differentiable through the implicit function theorem.
        """
        return _bisect_inverse(self, jnp.asarray(lam))

    def marginal_std(self, t, data_std=1.0):
        """Standard deviation of ``x_t`` for data of the given std."""
        return jnp.sqrt((self.alpha(t) * data_std) ** 2 + self.sigma(t) ** 2)


def _bisect(lam_fn, lam, lo, hi, iters=80):
    lam = jnp.asarray(lam)
    lo = jnp.full_like(lam, lo)
    hi = jnp.full_like(lam, hi)

    def step(_, bounds):
        a, b = bounds
        m = 0.5 * (a + b)
        # lam decreases in t: if lam(m) > target the root lies above m.
        above = lam_fn(m) > lam
        return jnp.where(above, m, a), jnp.where(above, b, m)

    a, b = jax.lax.fori_loop(0, iters, step, (lo, hi))
    return 0.5 * (a + b)


def _bisect_inverse(schedule: NoiseSchedule, lam):
    @jax.custom_jvp
    def inv(lam):
        return _bisect(schedule.lam, jax.lax.stop_gradient(lam), schedule.t_lo, schedule.t_hi)

    @inv.defjvp
    def inv_jvp(primals, tangents):
        (lam,), (dlam,) = primals, tangents
        t = inv(lam)
        dlam_dt = jax.grad(lambda s: jnp.sum(schedule.lam(s)))(t)
        return t, dlam / dlam_dt

    return inv(lam)
