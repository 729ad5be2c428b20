"""Time-shift sampling (TS-DPM): per-sample network times chosen by variance matching.

Li, van de Weijer, Wang, Khan & Tuytelaars, "Alleviating Exposure Bias in Diffusion
Models through Sampling with Shifted Time Steps", ICLR 2024 (arXiv:2305.15583);
official code ``Mingxiao-Li/TS-DPM`` (``DPM_Solver.time_shift``). Sampling drifts
the noise level of ``x`` away from the level of the time it is at (exposure bias).
TS-DPM keeps the solver's time ``t`` but evaluates the network at the time whose
noise level matches the sample: per sample, the variance of ``x`` over its
coordinates picks, within a window of ``w`` training steps around ``t``,

    t_s = argmin_{tau in t + {-w//2, .., w//2}/N} (var(x) - sigma(tau)^2)^2,

(``1 - alpha_bar_tau = sigma(tau)^2`` on VP schedules) only while ``t > cutoff``;
the noise prediction at ``t_s`` is then used as the noise prediction at ``t``
(DESIGN notation)::

    eps_hat(x, t) := eps(x, t_s) = (x - alpha(t_s) D(x, t_s))/sigma(t_s),
    x0_hat(x, t)  = (x - sigma(t) eps(x, t_s))/alpha(t).

No extra NFE. ``window = 0`` (or ``t <= cutoff``) gives ``t_s = t`` and the base
denoiser's output exactly. Paper example: DPM-Solver-2 at 5 steps with
``w = 30``, cutoff 300 of 1000 training steps (``cutoff = 0.3`` here).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp


def _bcast(v, x):
    v = jnp.asarray(v).astype(x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def shifted_times(x, t, schedule, window: int, cutoff=None, n_train: int = 1000,
                  data_var: float = 0.0, batched: bool = True):
    """TS-DPM's per-sample network times for the samples ``x`` at the solver time ``t``.

    ``var(x)`` is the unbiased variance over all coordinates of a sample (the
    official ``torch.var``); candidates outside the schedule's ``[t_lo, t_hi]`` are
    skipped; ``data_var`` adds ``alpha(tau)^2 data_var`` to the target variance
    (``0``: the paper's ``1 - alpha_bar``). Returns ``[batch]`` times (a scalar if
    ``batched`` is false).
    """
    t = jnp.asarray(t)
    if batched:
        flat = x.reshape(x.shape[0], -1)
    else:
        flat = x.reshape(1, -1)
    var = jnp.var(flat, axis=-1, ddof=1)
    half = window // 2
    offsets = jnp.arange(-half, half + 1, dtype=t.dtype) / n_train
    cand = t[..., None] + offsets  # [..., C]
    target = schedule.sigma(cand) ** 2 + data_var * schedule.alpha(cand) ** 2
    inside = (cand >= schedule.t_lo) & (cand <= schedule.t_hi)
    dist = jnp.where(inside, (var[:, None] - target) ** 2, jnp.inf)
    idx = jnp.argmin(dist, axis=-1)
    ts = jnp.take_along_axis(jnp.broadcast_to(cand, dist.shape), idx[:, None], axis=-1)[:, 0]
    if cutoff is not None:
        ts = jnp.where(t > cutoff, ts, t)
    return ts if batched else ts[0]


def time_shift(denoiser: Callable, schedule, window: int = 30, cutoff=None,
               n_train: int | None = None, data_var: float = 0.0) -> Callable:
    """A denoiser whose network time is TS-DPM's shifted time (module docstring).

    Args:
        denoiser: ``D(x, t) -> x0_hat`` accepting per-sample times ``t`` of shape
            ``[batch]`` (every samplax adapter and analytic model does).
        schedule: the noise schedule of the solver's times.
        window: ``w``, the number of training steps searched around ``t``.
        cutoff: shift only while ``t > cutoff`` (schedule time; 0.3 = step 300 of 1000).
        n_train: training steps per unit time (default: ``schedule.n`` for a
            :class:`~samplax.schedules.DiscreteVP`, else 1000).
        data_var: optional data variance in the matched level (see :func:`shifted_times`).

    Returns:
        ``D_ts(x, t)``, usable with any plan (no extra NFE). Needs a batch axis on
        ``x`` (samples are rows).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    n_train = int(getattr(schedule, "n", 1000) if n_train is None else n_train)

    def D(x, t):
        t = jnp.asarray(t)
        ts = shifted_times(x, t, schedule, window, cutoff, n_train, data_var)
        d_s = denoiser(x, ts)
        eps = (x - _bcast(schedule.alpha(ts), x) * d_s) / _bcast(schedule.sigma(ts), x)
        x0 = (x - _bcast(schedule.sigma(t), x) * eps) / _bcast(schedule.alpha(t), x)
        return jnp.where(_bcast(ts == t, x), d_s, x0)

    return D


__all__ = ["shifted_times", "time_shift"]
