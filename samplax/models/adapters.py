"""Parameterization adapters: wrap a trained network into a denoiser ``D(x, t) -> x0_hat``.

With ``x_t = alpha x0 + sigma eps`` every common network output is an affine
function of ``x0`` given ``x``, so each adapter inverts it in closed form:

============  ==========================  ==================================================
adapter       network predicts            ``x0_hat``
============  ==========================  ==================================================
from_epsilon  ``eps``                     ``(x - sigma eps)/alpha``
from_x0       ``x0`` ("sample")           the output itself
from_v        ``v = alpha eps - sigma x0``  ``(alpha x - sigma v)/(alpha^2 + sigma^2)``
from_flow     ``u = d x_t/dt``            ``(sigma' x - sigma u)/(sigma' alpha - alpha' sigma)``
from_score    ``grad log p_t = -eps/sigma``  ``(x + sigma^2 score)/alpha``
============  ==========================  ==================================================

The network is called as ``model(x, t_in, *args, **kwargs)``; the denoiser
``D(x, t, *args, **kwargs)`` forwards extra arguments (conditioning), so bind them
with ``functools.partial`` before handing ``D`` to :func:`samplax.sample`. ``t`` is
the noise schedule's time, a scalar or one per sample (``[batch]``, broadcast over
the trailing axes of ``x``). ``t_in`` is chosen by ``time_input``:

- ``"t"``: the schedule's continuous time;
- ``"label"``: a :class:`~samplax.schedules.DiscreteVP` label ``N t - 1``;
- ``"sigma"``: ``sigma_tilde = sigma/alpha`` (EDM / k-diffusion style);
- ``"log_sigma"``: ``log sigma_tilde = -lam``;
- ``"c_noise"``: EDM's ``log(sigma_tilde)/4`` (Karras et al. 2022, table 1);
- a callable ``t -> t_in``.

Each denoiser carries its noise schedule as ``D.schedule``: :func:`samplax.sample`
refuses a plan built on another schedule (its ``alpha`` and ``sigma`` at the plan's
times differ), where a mismatch would otherwise give a wrong sample silently.

On a time-shifted schedule (:class:`~samplax.schedules.LogSNRShift`) the network
runs at the base schedule's time ``base_time(t)``: the adapters unwrap the shift
first, so ``"t"`` and ``"label"`` are base times and ``from_flow`` expects the
velocity in base time, as SD3/Flux pipelines do.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samplax.schedules.base import NoiseSchedule
from samplax.schedules.shift import LogSNRShift

Array = Any
Model = Callable[..., Array]
Denoiser = Callable[..., Array]

_TIME_INPUTS = ("t", "label", "sigma", "log_sigma", "c_noise")


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def unshift(schedule: NoiseSchedule, t):
    """``(base schedule, base time)`` under any stack of :class:`LogSNRShift` wrappers."""
    while isinstance(schedule, LogSNRShift):
        t = schedule.base_time(t)
        schedule = schedule.base
    return schedule, t


def _check_time_input(schedule: NoiseSchedule, time_input) -> None:
    if callable(time_input):
        return
    if time_input not in _TIME_INPUTS:
        raise ValueError(f"time_input must be one of {_TIME_INPUTS} or a callable, "
                         f"got {time_input!r}")
    base = schedule
    while isinstance(base, LogSNRShift):
        base = base.base
    if time_input == "label" and not hasattr(base, "label"):
        raise TypeError(f"time_input='label' needs a discrete schedule (DiscreteVP), "
                        f"got {type(base).__name__}")


def network_time(schedule: NoiseSchedule, t, time_input="t"):
    """The time the network is given at the schedule's time ``t`` (see module doc)."""
    base, tau = unshift(schedule, _as_float(t))
    return _time_value(base, tau, time_input)


def _time_value(base, tau, time_input):
    if callable(time_input):
        out = time_input(tau)
        if not isinstance(out, jax.Array | np.ndarray | float | int) or isinstance(out, bool):
            raise TypeError(f"time_input must map a time to a number or an array, its "
                            f"{getattr(time_input, '__name__', 'function')} returned "
                            f"{type(out).__name__}")
        return out
    if time_input == "t":
        return tau
    if time_input == "label":
        return base.label(tau)
    log_st = -base.lam(tau)  # log sigma_tilde
    if time_input == "sigma":
        return jnp.exp(log_st)
    if time_input == "log_sigma":
        return log_st
    if time_input == "c_noise":
        return 0.25 * log_st
    raise ValueError(f"unknown time_input {time_input!r}")


def _per_sample(v, x):
    """Cast a schedule value to ``x``'s dtype and broadcast a ``[batch]`` time over ``x``."""
    v = jnp.asarray(v).astype(x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _short(v) -> str:
    text = repr(v)
    return f"{text[:57] + '...' if len(text) > 60 else text} ({type(v).__name__})"


def _max_positional(f) -> float:
    """How many positional arguments ``f`` accepts (inf when unknown or unbounded)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):  # builtins, some C extensions: cannot tell
        return math.inf
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return math.inf
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _adapter(model: Model, schedule: NoiseSchedule, time_input, to_x0) -> Denoiser:
    if not callable(model):
        raise TypeError(f"model must be the network, a callable model(x, t_in, ...), got "
                        f"{_short(model)}")
    k = _max_positional(model)
    if k < 2:
        raise TypeError(f"model must be called as model(x, t_in, ...), with the state and "
                        f"the time, but {_short(model)} accepts only {k} argument(s)")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule (e.g. VPLinear(), "
                        f"DiscreteVP.linear()), got {_short(schedule)}")
    _check_time_input(schedule, time_input)

    def denoiser(x, t, *args, **kwargs):
        x = jnp.asarray(x)
        base, tau = unshift(schedule, _as_float(t))
        out = model(x, _time_value(base, tau, time_input), *args, **kwargs)
        if not isinstance(out, jax.Array | np.ndarray):
            raise TypeError(f"the model returned {type(out).__name__}; it must return an "
                            "array of its prediction, of x's shape")
        return to_x0(base, tau, x, jnp.asarray(out))

    denoiser.schedule = schedule  # samplax.sample checks it against the plan's
    return denoiser


def from_epsilon(model: Model, schedule: NoiseSchedule, *, time_input="t") -> Denoiser:
    """Wrap a noise-prediction network (DDPM, Ho et al. 2020):
    ``x0_hat = (x - sigma eps_hat)/alpha`` (undefined where ``alpha = 0``)."""

    def to_x0(base, tau, x, eps):
        a, s = _per_sample(base.alpha(tau), x), _per_sample(base.sigma(tau), x)
        return (x - s * eps) / a

    return _adapter(model, schedule, time_input, to_x0)


def from_x0(model: Model, schedule: NoiseSchedule, *, time_input="t") -> Denoiser:
    """Wrap a data-prediction network (diffusers' ``prediction_type="sample"``)."""
    return _adapter(model, schedule, time_input, lambda base, tau, x, x0: x0)


from_sample = from_x0


def from_v(model: Model, schedule: NoiseSchedule, *, time_input="t") -> Denoiser:
    """Wrap a v-prediction network, ``v = alpha eps - sigma x0`` (Salimans & Ho 2022,
    "Progressive distillation", sec. 4 and appendix D).

    ``x0_hat = (alpha x - sigma v)/(alpha^2 + sigma^2)``: the familiar
    ``alpha x - sigma v`` on VP schedules, exact on any other; defined at zero
    terminal SNR (``alpha = 0``), where v-prediction is the usual choice.
    """

    def to_x0(base, tau, x, v):
        a, s = _per_sample(base.alpha(tau), x), _per_sample(base.sigma(tau), x)
        return (a * x - s * v) / (a**2 + s**2)

    return _adapter(model, schedule, time_input, to_x0)


def from_flow(model: Model, schedule: NoiseSchedule, *, time_input="t") -> Denoiser:
    """Wrap a flow-matching network predicting the velocity ``u = d x_t / dt``
    (Lipman et al. 2023; Liu et al. 2023, rectified flow).

    The conditional velocity is ``u = alpha' x0 + sigma' eps``; with
    ``eps = (x - alpha x0)/sigma`` this gives
    ``x0_hat = (sigma' x - sigma u)/(sigma' alpha - alpha' sigma)``, the
    derivatives taken by ``jax.jvp`` of the schedule in its own (unshifted) time.
    The denominator is ``-alpha sigma lam' > 0``. For rectified flow
    (``alpha = 1 - t``, ``sigma = t``) it is ``x0_hat = x - t u`` with
    ``u = eps - x0``; for EDM (``sigma = t``) ``x0_hat = x - t u``, ``u = eps``.
    """

    def to_x0(base, tau, x, u):
        ones = jnp.ones_like(tau)
        a, da = jax.jvp(base.alpha, (tau,), (ones,))
        s, ds = jax.jvp(base.sigma, (tau,), (ones,))
        a, da, s, ds = (_per_sample(v, x) for v in (a, da, s, ds))
        return (ds * x - s * u) / (ds * a - da * s)

    return _adapter(model, schedule, time_input, to_x0)


def from_score(model: Model, schedule: NoiseSchedule, *, time_input="t") -> Denoiser:
    """Wrap a score network ``grad_x log p_t(x) = -eps/sigma`` (Song et al. 2021).

    Tweedie's formula: ``x0_hat = (x + sigma^2 score)/alpha``.
    """

    def to_x0(base, tau, x, score):
        a, s = _per_sample(base.alpha(tau), x), _per_sample(base.sigma(tau), x)
        return (x + s**2 * score) / a

    return _adapter(model, schedule, time_input, to_x0)


_BY_NAME = {
    "epsilon": from_epsilon,
    "eps": from_epsilon,
    "x0": from_x0,
    "sample": from_x0,
    "v": from_v,
    "v_prediction": from_v,
    "flow": from_flow,
    "score": from_score,
}


def from_prediction(model: Model, schedule: NoiseSchedule, prediction_type: str, *,
                    time_input="t") -> Denoiser:
    """Dispatch on a name: ``"epsilon"``, ``"x0"``/``"sample"``, ``"v"``/``"v_prediction"``
    (diffusers' ``prediction_type`` values), ``"flow"`` or ``"score"``."""
    if not isinstance(prediction_type, str):
        raise TypeError(f"prediction_type must be a string, one of {sorted(_BY_NAME)}, "
                        f"got {_short(prediction_type)}")
    try:
        make = _BY_NAME[prediction_type]
    except KeyError:
        raise ValueError(f"prediction_type must be one of {sorted(_BY_NAME)}, "
                         f"got {prediction_type!r}") from None
    return make(model, schedule, time_input=time_input)
