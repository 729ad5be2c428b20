"""Step schedules: the times a sampler visits, from noise (``t_start``) to data (``t_end``).

Every function returns a strictly decreasing 1-D array of ``n_steps + 1`` times of
the given noise schedule, from ``t_start`` (default ``schedule.t_max``) to
``t_end`` (default ``schedule.t_min``), ready for any solver constructor. Spacings
defined on the noise level use the EDM view ``sigma_tilde = sigma/alpha = e^{-lam}``
(Karras et al. 2022) and map back with ``schedule.t_of_lam``, so each one works
with every noise schedule.

``append_zero=True`` (k-diffusion's ``append_zero``, diffusers'
``final_sigmas_type="zero"``) spaces ``n_steps`` points from ``t_start`` to
``t_end`` and then adds the schedule's zero-noise time ``t_lo`` (``sigma = 0``,
e.g. ``t = 0`` for EDM and rectified flow): the last step then denoises fully.

The functions are jittable in their end times (``n_steps`` is static); value
checks run only on concrete inputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule, check_int_arg, describe, real_values
from samplax.schedules.discrete import DiscreteVP

Array = Any

# Align Your Steps (Sabour, Fidler & Kreis 2024), the published 10-step schedules as
# sigma_tilde values (11 each, from the project page).
AYS_SIGMAS = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


# Schedule evaluations on whole arrays go through one compiled call each: run eagerly,
# a schedule's ~20 elementwise ops would each compile anew for every array length.
@jax.jit
def _lam(schedule, t):
    return schedule.lam(t)


@jax.jit
def _t_of_lam(schedule, lam):
    return schedule.t_of_lam(lam)


def validate_timesteps(schedule, timesteps, *, min_len: int = 2) -> Array:
    """Validate a sampler's times: 1-D, strictly decreasing, inside the schedule.

    Only the last time may have ``sigma = 0`` (``lam = +inf``); no time may have
    ``alpha = 0`` (``lam = -inf``) except past the end. Returns them as a float
    array. Value checks run only on concrete inputs, so step and solver
    constructors stay traceable for gradients with respect to the times.

    Raises:
        TypeError: for a schedule that is no :class:`NoiseSchedule`, or times that
            are not numbers.
        ValueError: with the offending values, for any violation.
    """
    _check_schedule(schedule)
    real_values("", "timesteps", timesteps, finite=False, what="a 1-D array of numbers")
    ts = _as_float(timesteps)
    if ts.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D array, got shape {ts.shape}")
    if ts.shape[0] < min_len:
        raise ValueError(f"need at least {min_len} timesteps (one step), got {ts.shape[0]}")
    if _is_concrete(ts):
        v = np.asarray(ts)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"timesteps must be finite, got {v}")
        if not np.all(np.diff(v) < 0):
            i = int(np.argmax(np.diff(v) >= 0))
            raise ValueError(
                "timesteps must be strictly decreasing (noise to data); "
                f"t[{i}]={v[i]:.6g} is followed by t[{i + 1}]={v[i + 1]:.6g}"
            )
        lo, hi = schedule.t_lo, schedule.t_hi
        tol = 1e-9 * max(1.0, abs(hi))
        if v[0] > hi + tol or v[-1] < lo - tol:
            raise ValueError(
                f"timesteps [{v[0]:.6g} .. {v[-1]:.6g}] leave the schedule's range "
                f"[{lo:.6g}, {hi:.6g}]"
            )
        lam = np.asarray(_lam(schedule, ts[:-1]))
        if not np.all(np.isfinite(lam)):
            msg = f"only the last timestep may have sigma = 0 (lam = inf); got lam = {lam}"
            if np.any(np.isneginf(lam)):
                msg += (
                    "; the first timestep has alpha = 0 (lam = -inf, e.g. zero terminal "
                    "SNR at t = 1), where no sampler can start: start later, e.g. at "
                    "schedule.t_max"
                )
            raise ValueError(msg)
    return ts


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError("schedule must be a NoiseSchedule (e.g. VPLinear(), EDM()), got "
                        f"{describe(schedule)}")


def _check_positive(owner: str, name: str, x) -> None:
    """A finite number > 0 (checked when concrete; arrays elementwise)."""
    v = real_values(owner, name, x, what="a finite number > 0")
    if v is not None and not np.all(v > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {describe(x)}")


def _check_n(n_steps) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer):
        raise TypeError(f"n_steps must be a Python int, got {n_steps!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    return int(n_steps)


def _zero_time(schedule):
    """The zero-noise time ``t_lo``, checked to have ``sigma = 0``."""
    t = schedule.t_lo
    lam = _lam(schedule, t)
    if _is_concrete(lam) and not np.isposinf(np.asarray(lam)):
        raise ValueError(
            f"append_zero needs a schedule that reaches sigma = 0; {type(schedule).__name__} "
            f"has sigma = {float(schedule.sigma(t)):.6g} at its lowest time t_lo = {t}"
        )
    return t


def _setup(schedule, n_steps, t_start, t_end, append_zero, *, finite_end=True):
    """Check the request; returns (number of spaced points, t_start, t_end)."""
    n = _check_n(n_steps)
    _check_schedule(schedule)
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if v is not None:
            real_values("", name, v, finite=False, what="a number (a time of the schedule)")
    t0 = _as_float(schedule.t_max if t_start is None else t_start)
    t1 = _as_float(schedule.t_min if t_end is None else t_end)
    if t0.ndim or t1.ndim:
        raise ValueError("t_start and t_end must be scalars")
    if append_zero:
        _zero_time(schedule)
    if _is_concrete(t0) and _is_concrete(t1):
        a, b = float(t0), float(t1)
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"t_start and t_end must be finite, got {a}, {b}")
        if not a > b:
            raise ValueError(
                "t_start must be greater than t_end (sampling runs from noise to data); "
                f"got t_start={a:.6g}, t_end={b:.6g}"
            )
        lo, hi = schedule.t_lo, schedule.t_hi
        tol = 1e-9 * max(1.0, abs(hi))
        if a > hi + tol or b < lo - tol:
            raise ValueError(
                f"[t_end, t_start] = [{b:.6g}, {a:.6g}] leaves the schedule's range "
                f"[{lo:.6g}, {hi:.6g}]"
            )
        if np.isneginf(np.asarray(_lam(schedule, t0))):
            raise ValueError(
                f"t_start={a:.6g} has alpha = 0 (lam = -inf), where no sampler can start; "
                "start at a smaller time"
            )
        if finite_end and np.isposinf(np.asarray(_lam(schedule, t1))):
            raise ValueError(
                f"t_end={b:.6g} has sigma = 0 (lam = inf), where this spacing is undefined; "
                "end at a positive noise level and pass append_zero=True to finish at sigma = 0"
            )
    return (n if append_zero else n + 1), t0, t1


def _pin(ts, t0, t1):
    # Round-off in t_of_lam must not move the ends (nor leave the schedule's range).
    ts = ts.at[0].set(t0)
    return ts.at[-1].set(t1) if ts.shape[0] > 1 else ts


def _check_resolution(name: str, ts) -> None:
    """Spaced times that collide: the spacing is finer than the dtype resolves."""
    if not _is_concrete(ts) or ts.shape[0] < 2:
        return
    v = np.asarray(ts)
    if not np.all(np.isfinite(v)):
        return  # validate_timesteps names the non-finite times
    d = np.diff(v)
    if np.all(d < 0):
        return
    i = int(np.argmax(d >= 0))
    hint = " or enable float64 (jax.config.update('jax_enable_x64', True))" \
        if v.dtype == np.float32 else ""
    raise ValueError(
        f"{name}: {v.shape[0]} spaced times are too many for the resolution of {v.dtype} "
        f"times: t[{i}]={v[i]:.9g} and t[{i + 1}]={v[i + 1]:.9g} collide; use fewer "
        f"steps (a smaller n_steps, hence NFE){hint}"
    )


def _finish(schedule, ts, append_zero, name: str | None = None):
    if name is not None:
        _check_resolution(name, ts)
    if append_zero:
        ts = jnp.concatenate([ts, jnp.full((1,), _zero_time(schedule), ts.dtype)])
    return validate_timesteps(schedule, ts)


def _sigma_tilde(schedule, t):
    return jnp.exp(-_lam(schedule, t))


def _t_of_sigma_tilde(schedule, st):
    return _t_of_lam(schedule, -jnp.log(st))


# --------------------------------------------------------------------------------------
# Spacings in time
# --------------------------------------------------------------------------------------


def uniform_time(schedule, n_steps: int, *, t_start=None, t_end=None,
                 append_zero: bool = False) -> Array:
    """Equal steps in the schedule's time (DDPM/DDIM "uniform"; DPM-Solver ``time_uniform``)."""
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero, finite_end=False)
    return _finish(schedule, _pin(jnp.linspace(t0, t1, m), t0, t1), append_zero,
                   "uniform_time")


def time_quadratic(schedule, n_steps: int, *, t_start=None, t_end=None,
                   append_zero: bool = False) -> Array:
    """Equal steps in ``sqrt(t)``: ``linspace(sqrt T, sqrt t0)^2``.

    DPM-Solver's ``time_quadratic`` (Lu et al. 2022, appendix D.1; DDIM's
    "quadratic" skip type), recommended there for discrete-time models.
    """
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero, finite_end=False)
    ts = jnp.linspace(jnp.sqrt(t0), jnp.sqrt(t1), m) ** 2
    return _finish(schedule, _pin(ts, t0, t1), append_zero, "time_quadratic")


def sgm_uniform(schedule, n_steps: int, *, t_start=None, t_end=None) -> Array:
    """``n_steps`` of ``n_steps + 1`` equal time steps from ``t_start`` to ``t_end``,
    the last replaced by the zero-noise time ``t_lo``.

    ComfyUI's ``sgm_uniform`` (the Stability "sgm" code's discretization:
    ``linspace(start, end, n + 1)[:-1]`` then ``sigma = 0``), uniform in the
    schedule's own time. Needs a schedule with ``sigma(t_lo) = 0``.
    """
    n, t0, t1 = _setup(schedule, n_steps, t_start, t_end, True, finite_end=False)
    ts = _pin(jnp.linspace(t0, t1, n + 1), t0, t1)[:-1]
    _check_resolution("sgm_uniform", ts)
    return _finish(schedule, ts, True)


def discrete_spacing(schedule: DiscreteVP, n_steps: int, spacing: str = "linspace", *,
                     steps_offset: int = 0, final: str = "zero") -> Array:
    """diffusers' ``timestep_spacing`` (table 2 of Lin et al. 2024) as continuous times.

    The ``n_steps`` training labels the network is evaluated at are those of
    diffusers' ``DDIMScheduler.set_timesteps`` for ``N`` training steps:

    - ``"linspace"``: ``round(linspace(0, N - 1, n))``, reversed;
    - ``"leading"``: ``arange(n) * (N // n) + steps_offset``, reversed (SD 1.x uses
      ``steps_offset=1``);
    - ``"trailing"``: ``round(N - i N/n) - 1`` for ``i = 0..n-1`` (starts at ``N - 1``).

    (diffusers' multistep DPM-Solver uses ``linspace(0, N - 1, n + 1)`` without its
    last point instead; pass such labels through ``custom`` if needed.) Label ``l``
    is the time ``(l + 1)/N`` (:meth:`DiscreteVP.t_of_label`). The final time is
    ``t = 0`` (``final="zero"``: ``alpha_bar = 1``, DDIM's ``set_alpha_to_one``) or
    label 0 (``final="sigma_min"``, ``t = 1/N``).

    Returns:
        ``n_steps + 1`` times: the label times, then the final time.
    """
    if not isinstance(schedule, DiscreteVP):
        raise TypeError(f"discrete_spacing needs a DiscreteVP schedule, got {type(schedule)}")
    n = _check_n(n_steps)
    steps_offset = check_int_arg("discrete_spacing", "steps_offset", steps_offset)
    N = schedule.n
    if spacing == "linspace":
        labels = np.round(np.linspace(0, N - 1, n))[::-1]
    elif spacing == "leading":
        if N // n < 1:
            raise ValueError(f"leading spacing needs n_steps <= {N}, got {n}")
        labels = (np.arange(n) * (N // n))[::-1] + steps_offset
    elif spacing == "trailing":
        labels = np.round(N - np.arange(n) * (N / n)) - 1
    else:
        raise ValueError(f"spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")
    if n > 1 and not np.all(np.diff(labels) < 0):
        raise ValueError(f"{n} steps with {spacing!r} spacing repeat a label of the {N} "
                         "training steps; use fewer steps")
    if labels[0] > N - 1 or labels[-1] < 0:
        raise ValueError(f"labels {labels[-1]:g}..{labels[0]:g} leave 0..{N - 1} "
                         f"(steps_offset={steps_offset})")
    if final == "zero":
        last = 0.0
    elif final == "sigma_min":
        if labels[-1] == 0:
            raise ValueError("final='sigma_min' needs a last label above 0; use final='zero'")
        last = 1.0 / N
    else:
        raise ValueError(f"final must be 'zero' or 'sigma_min', got {final!r}")
    ts = np.append((labels + 1.0) / N, last)
    return validate_timesteps(schedule, jnp.asarray(ts, jnp.result_type(float)))


# --------------------------------------------------------------------------------------
# Spacings in log-SNR / sigma_tilde
# --------------------------------------------------------------------------------------


def uniform_logsnr(schedule, n_steps: int, *, t_start=None, t_end=None,
                   append_zero: bool = False) -> Array:
    """Equal steps in ``lam`` (DPM-Solver's ``logSNR``, Lu et al. 2022, sec. 3.3)."""
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero)
    lam = jnp.linspace(_lam(schedule, t0), _lam(schedule, t1), m)
    return _finish(schedule, _pin(_t_of_lam(schedule, lam), t0, t1), append_zero,
                   "uniform_logsnr")


def polyexponential(schedule, n_steps: int, rho: float = 1.0, *, t_start=None, t_end=None,
                    append_zero: bool = False) -> Array:
    """k-diffusion's ``get_sigmas_polyexponential``: ``log sigma_tilde`` follows
    ``ramp^rho`` with ``ramp = linspace(1, 0)``; ``rho = 1`` is :func:`exponential`."""
    _check_positive("polyexponential", "rho", rho)
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero)
    lam0, lam1 = _lam(schedule, t0), _lam(schedule, t1)
    ramp = jnp.linspace(1.0, 0.0, m) ** rho
    return _finish(schedule, _pin(_t_of_lam(schedule, lam1 + ramp * (lam0 - lam1)), t0, t1),
                   append_zero, "polyexponential")


def exponential(schedule, n_steps: int, *, t_start=None, t_end=None,
                append_zero: bool = False) -> Array:
    """Equal steps in ``log sigma_tilde`` (k-diffusion's ``get_sigmas_exponential``).

    Since ``log sigma_tilde = -lam`` this equals :func:`uniform_logsnr`.
    """
    return polyexponential(schedule, n_steps, 1.0, t_start=t_start, t_end=t_end,
                           append_zero=append_zero)


def karras(schedule, n_steps: int, rho: float = 7.0, *, t_start=None, t_end=None,
           append_zero: bool = False) -> Array:
    """Karras et al. (2022, eq. 5): equal steps in ``sigma_tilde^(1/rho)``.

    ``sigma_i = (s_max^(1/rho) + i/(m-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` on
    the ``m`` spaced points, with ``s = sigma_tilde`` at ``t_start``/``t_end``.
    EDM's sampler is ``karras(EDM(), n, append_zero=True)``: ``n`` sigmas from 80
    to 0.002, then 0. ``t_end`` may itself have ``sigma = 0``.
    """
    _check_positive("karras", "rho", rho)
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero, finite_end=False)
    inv = 1.0 / rho
    s_max, s_min = _sigma_tilde(schedule, t0) ** inv, _sigma_tilde(schedule, t1) ** inv
    st = (s_max + jnp.linspace(0.0, 1.0, m) * (s_min - s_max)) ** rho
    return _finish(schedule, _pin(_t_of_sigma_tilde(schedule, st), t0, t1), append_zero,
                   "karras")


def kl_optimal(schedule, n_steps: int, *, data_std: float = 1.0, t_start=None, t_end=None,
               append_zero: bool = False) -> Array:
    """The KL-optimal schedule for Gaussian data ``N(0, c^2 I)`` (AYS, Sabour et al. 2024,
    appendix; ComfyUI's ``kl_optimal`` with ``c = 1``).

    Equal steps in ``atan(sigma_tilde/c)``:
    ``sigma_i = c tan((1 - i/n) atan(s_max/c) + (i/n) atan(s_min/c))``.
    ``t_end`` may itself have ``sigma = 0``.
    """
    _check_positive("kl_optimal", "data_std", data_std)
    m, t0, t1 = _setup(schedule, n_steps, t_start, t_end, append_zero, finite_end=False)
    a_max = jnp.arctan(_sigma_tilde(schedule, t0) / data_std)
    a_min = jnp.arctan(_sigma_tilde(schedule, t1) / data_std)
    r = jnp.linspace(0.0, 1.0, m)
    st = data_std * jnp.tan((1.0 - r) * a_max + r * a_min)
    return _finish(schedule, _pin(_t_of_sigma_tilde(schedule, st), t0, t1), append_zero,
                   "kl_optimal")


_AYS_ROUNDING = 1e-3


def _loglinear_interp(table, n_points: int) -> np.ndarray:
    # AYS (and diffusers/ComfyUI): interpolate the reversed log-sigmas on linspace(0, 1).
    table = np.asarray(table, float)
    xs = np.linspace(0.0, 1.0, table.shape[0])
    ys = np.interp(np.linspace(0.0, 1.0, n_points), xs, np.log(table[::-1]))
    return np.exp(ys)[::-1]


def align_your_steps(schedule, n_steps: int, model: str = "sd15", *,
                     append_zero: bool = False) -> Array:
    """Align Your Steps (Sabour, Fidler & Kreis 2024): the published 10-step schedules.

    ``model`` picks the table (``"sd15"``, ``"sdxl"``, ``"svd"``, see ``AYS_SIGMAS``),
    given in ``sigma_tilde``; other step counts interpolate ``log sigma_tilde``
    linearly on ``linspace(0, 1)`` as diffusers and ComfyUI do, so ``n_steps = 10``
    gives the table exactly. A table value within 0.1% past an end of the schedule
    (rounding: 14.615 against Stable Diffusion's 14.6146) is snapped onto that end.
    The tables fix their own ends (no ``t_start``/``t_end``);
    they are mapped to this schedule's times with ``t_of_lam``, so the schedule must
    cover them (SD: ``DiscreteVP.scaled_linear()``; SVD: ``EDM(sigma_max=700.0)``).
    ``append_zero=True`` replaces the last time by the zero-noise time, as ComfyUI's
    ``AlignYourStepsScheduler`` and diffusers' AYS sigma tables do (``n_steps + 1``
    times in all).
    """
    n = _check_n(n_steps)
    _check_schedule(schedule)
    if not isinstance(model, str) or model not in AYS_SIGMAS:
        raise ValueError(f"model must be one of {sorted(AYS_SIGMAS)}, got {model!r}")
    st = jnp.asarray(_loglinear_interp(AYS_SIGMAS[model], n + 1), jnp.result_type(float))
    # The tables are rounded (14.615 for SD's 14.6146...): values within 0.1% past an
    # end of the schedule are that end, not an error.
    st_hi = _sigma_tilde(schedule, schedule.t_hi)
    st_lo = _sigma_tilde(schedule, schedule.t_lo)
    st = jnp.where((st > st_hi) & (st <= st_hi * (1 + _AYS_ROUNDING)), st_hi, st)
    st = jnp.where((st < st_lo) & (st >= st_lo * (1 - _AYS_ROUNDING)), st_lo, st)
    ts = _t_of_sigma_tilde(schedule, st)
    if append_zero:
        ts = ts.at[-1].set(_zero_time(schedule))
    return validate_timesteps(schedule, ts)


def custom(schedule, times) -> Array:
    """User-given times, validated (1-D, strictly decreasing, inside the schedule)."""
    return validate_timesteps(schedule, times)
