"""Restart sampling (Xu, Deng, Tian, Zhang, Ziwei & Jaakkola 2023).

Xu et al., "Restart Sampling for Improving Generative Processes", NeurIPS 2023
(arXiv:2306.14878); official code ``Newbeeer/diffusion_restart_sampling``
(``benchmarks/generate_restart.py``). A deterministic main solve runs over the
main grid; each restart interval ``[t_min, t_max]`` (EDM noise levels
``sigma_tilde = sigma/alpha = e^{-lam}``, DESIGN notation) is attached to the
main time nearest to ``t_min``. After the main step that lands there
(``sigma_tilde_j``), the sampler repeats ``K`` times (paper Algorithm 1):

* **restart forward**: jump back up with fresh noise,
  ``x_tilde <- x_tilde + S_noise sqrt(t_max^2 - sigma_tilde_j^2) z``
  (the exact forward transition from ``sigma_tilde_j`` to ``t_max``);
* **restart backward**: solve back to ``sigma_tilde_j`` with the base solver on
  its own Karras grid of ``n_steps`` points from ``t_max`` to ``sigma_tilde_j``
  (``rho = 7``; ``n_steps - 1`` sub-steps), optionally with EDM churn
  ``restart_gamma`` on ``[S_min, S_max]`` as in the official code (the jump
  and the first churn are one draw of the summed variance).

NFE (Heun base) = ``2N - 1`` for the main solve (Euler on the last step) plus
``sum_i K_i 2 (n_steps_i - 1)`` (paper: main + ``sum 2 K (N_restart - 1)``).
Official EDM CIFAR-10 setting (README, ``params_cifar10_edm.txt``): 18 main
Karras steps, one interval ``[0.14, 0.30]`` with ``K = 2``, ``n_steps = 3``,
``S_noise = 1.003``, ``restart_gamma = 0.05`` on ``[0.01, 1]``: NFE 43
(:data:`EDM_CIFAR10`, :func:`restart_edm`). With every ``K = 0`` the plan is the
base solver's exactly. The forward jumps are not increments of one reverse-time
path, so Restart plans carry no Brownian spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from samplax.schedules import steps as step_schedules
from samplax.schedules.ve import EDM
from samplax.solvers._common import check_timesteps, is_concrete, real_option
from samplax.solvers._stochastic import check_nonneg, host_coefficients
from samplax.solvers.edm import _euler_step, _heun_step, edm_grid
from samplax.solvers.edm_sde import noise_up
from samplax.solvers.plan import Plan, PlanBuilder
from samplax.solvers.usf import Step, exponential_step


class RestartInterval(NamedTuple):
    """One restart interval (the official ``{i: [N_Restart, K, t_min, t_max]}``).

    Attributes:
        t_min: EDM noise level where the interval ends; snapped to the nearest
            main grid point ``sigma_tilde_j`` (official code).
        t_max: EDM noise level the restarts jump back up to.
        K: number of restarts (0 = none).
        n_steps: ``N_Restart``, points of the restart grid (``n_steps - 1`` sub-steps).
    """

    t_min: float
    t_max: float
    K: int
    n_steps: int


#: The official EDM CIFAR-10 configuration (18 main steps, NFE 43).
EDM_CIFAR10 = dict(
    n_main=18,
    intervals=(RestartInterval(0.14, 0.30, 2, 3),),
    S_noise=1.003,
    restart_gamma=0.05,
    S_min=0.01,
    S_max=1.0,
)

#: The official EDM ImageNet-64 configuration of the README (36 main steps, NFE 203).
EDM_IMAGENET64 = dict(
    n_main=36,
    intervals=(
        RestartInterval(19.35, 40.79, 1, 4),
        RestartInterval(1.09, 1.92, 1, 4),
        RestartInterval(0.59, 1.09, 5, 4),
        RestartInterval(0.30, 0.59, 5, 4),
        RestartInterval(0.06, 0.30, 6, 6),
    ),
    S_noise=1.003,
    restart_gamma=0.05,
    S_min=0.01,
    S_max=1.0,
)


_INTERVAL = "a RestartInterval(t_min, t_max, K, n_steps) or a 4-tuple"


def _check_intervals(intervals) -> list[RestartInterval]:
    if isinstance(intervals, RestartInterval):
        intervals = [intervals]  # a single interval
    if isinstance(intervals, str | bytes | dict) or not hasattr(intervals, "__iter__"):
        raise TypeError(f"intervals must be a sequence of RestartInterval(t_min, t_max, K, "
                        f"n_steps) (or 4-tuples), got {intervals!r} "
                        f"({type(intervals).__name__})")
    out = []
    for i, iv in enumerate(intervals):
        if isinstance(iv, str | bytes) or not isinstance(iv, tuple | list) or len(iv) != 4:
            raise TypeError(f"intervals[{i}] must be {_INTERVAL}, got {iv!r} "
                            f"({type(iv).__name__})")
        iv = RestartInterval(*iv)
        if isinstance(iv.K, bool) or not isinstance(iv.K, int | np.integer) or iv.K < 0:
            raise ValueError(f"K must be an integer >= 0, got {iv.K!r}")
        if (isinstance(iv.n_steps, bool) or not isinstance(iv.n_steps, int | np.integer)
                or iv.n_steps < 2):
            raise ValueError(f"n_steps (N_Restart) must be an integer >= 2, got {iv.n_steps!r}")
        for name in ("t_min", "t_max"):
            real_option(f"intervals[{i}].{name}", getattr(iv, name),
                        "a finite number (an EDM noise level)")
        if not 0 < float(iv.t_min) < float(iv.t_max):
            raise ValueError(f"need 0 < t_min < t_max, got [{iv.t_min}, {iv.t_max}]")
        out.append(iv)
    return out


class _Segment:
    """Advance the builder's anchor through a list of times with the base solver.

    The first step may start with extra noise (a restart jump) of standard
    deviation ``jump`` (in ``x_tilde`` units, from the anchor's level), merged with
    that step's churn into one draw; later steps churn with ``gamma``.
    """

    def __init__(self, schedule, base, S_noise, gamma, S_min, S_max):
        self.schedule, self.base = schedule, base
        self.S_noise, self.gamma, self.S_min, self.S_max = S_noise, gamma, S_min, S_max

    def run(self, b: PlanBuilder, ts, *, jump_to=None, last_euler: bool = False) -> None:
        times, alpha, sg = edm_grid(self.schedule, ts)
        if isinstance(self.base, Step):
            self._exponential(b, times, jump_to)
            return
        n = len(times) - 1
        for i in range(n):
            t_i, a_i, st_i = times[i], alpha[i], sg[i]
            on = (float(st_i) >= self.S_min) and (float(st_i) <= self.S_max) if is_concrete(
                st_i) else True
            g = self.gamma if on else 0.0
            if i == 0 and jump_to is not None:
                # from the anchor's level (sigma_tilde_j, time t_j) to t_max (1 + gamma)
                t_i, a_i, st_i = jump_to
            target = sg[0] * (1.0 + g) if i == 0 else st_i * (1.0 + g)
            t_hat, a_hat, s_hat, ratio, add = host_coefficients(
                noise_up, self.schedule, t_i, st_i, a_i, target)
            if is_concrete(add) and float(add) == 0.0 and float(ratio) == 1.0:
                x = None  # no noise in this step: exactly the base step
            else:
                z = b.noise()
                x = b.x * ratio + z * (a_hat * self.S_noise * add)
            euler = self.base == "euler" or (last_euler and i == n - 1)
            step = _euler_step if euler else _heun_step
            step(b, t_hat, times[i + 1], a_hat, alpha[i + 1], s_hat, sg[i + 1], x=x)

    def _exponential(self, b, times, jump_to):
        if jump_to is not None:
            t_j, a_j, st_j = jump_to
            _, alpha0, sg0 = edm_grid(self.schedule, jnp.stack([times[0]]))
            t_hat, a_hat, s_hat, ratio, add = host_coefficients(
                noise_up, self.schedule, t_j, st_j, a_j, sg0[0])
            z = b.noise()
            b.set_x(b.x * ratio + z * (a_hat * self.S_noise * add))
        outs = []
        n = len(times) - 1
        for i in range(n):
            outs.append(b.evaluate(b.x, times[i]))
            order = min(self.base.order, len(outs))
            b.set_x(exponential_step(self.schedule, b.x, times[i], times[i + 1],
                                     outs[::-1][:order], self.base.prediction,
                                     last=i == n - 1))


def restart(
    schedule,
    timesteps,
    intervals,
    *,
    base: str | Step = "heun",
    S_noise: float = 1.0,
    restart_gamma: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    rho: float = 7.0,
) -> Plan:
    """Restart sampling (Xu et al. 2023, Algorithm 1) on top of a base solver (module docstring).

    Args:
        schedule: the noise schedule (intervals are given in EDM noise levels
            ``sigma_tilde``, so the official EDM configurations carry over).
        timesteps: the main grid, strictly decreasing (e.g.
            ``karras(EDM(), 18, append_zero=True)``).
        intervals: :class:`RestartInterval` s (or 4-tuples ``(t_min, t_max, K, n_steps)``).
        base: ``"heun"`` (EDM Heun, Euler on the last main step: the official
            sampler), ``"euler"``, or a :class:`samplax.solvers.usf.Step` (a
            multistep exponential integrator, e.g. ``Step("data", 2)``, history
            restarted on every restart grid).
        S_noise: inflation of the restart (and churn) noise; official 1.003.
        restart_gamma: EDM churn ``gamma`` inside the restart backward steps whose
            level lies in ``[S_min, S_max]`` (official 0.05 on ``[0.01, 1]``; Heun
            and Euler bases only).
        rho: Karras exponent of the restart grids.

    Returns:
        A stochastic plan (deterministic if every ``K = 0``); NFE as in the module
        docstring, exactly the number of network calls.
    """
    ivs = _check_intervals(intervals)
    check_nonneg("S_noise", S_noise)
    check_nonneg("restart_gamma", restart_gamma)
    if not (base in ("heun", "euler") or isinstance(base, Step)):
        raise ValueError(f"base must be 'heun', 'euler' or a usf.Step, got {base!r}")
    if isinstance(base, Step) and restart_gamma:
        raise ValueError("restart_gamma (churn) needs a Heun or Euler base")
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    _, _, sg_main = edm_grid(schedule, ts)
    st_main = np.asarray([float(v) for v in sg_main])
    at: dict[int, list[RestartInterval]] = {}
    for iv in ivs:
        if iv.K == 0:
            continue
        j = int(np.argmin(np.abs(st_main - float(iv.t_min))))
        if j == 0 or j == n:
            raise ValueError(
                f"restart interval t_min = {iv.t_min} is nearest to the first or the last "
                f"main time (sigma_tilde {st_main[j]:.4g}); it must snap to an interior one"
            )
        if not float(iv.t_max) > st_main[j]:
            raise ValueError(f"t_max = {iv.t_max} must exceed the snapped t_min {st_main[j]:.4g}")
        at.setdefault(j, []).append(iv)
    seg_main = _Segment(schedule, base, S_noise, 0.0, S_min, S_max)
    seg_restart = _Segment(schedule, base, S_noise, restart_gamma, S_min, S_max)
    b = PlanBuilder(schedule)
    start = 0
    for j in sorted(at) + [n]:
        seg_main.run(b, ts[start:j + 1], last_euler=(j == n))
        for iv in at.get(j, []) if j < n else []:
            t_j = ts[j]
            for _ in range(iv.K):
                t_max = schedule.t_of_lam(-jnp.log(jnp.asarray(float(iv.t_max))))
                sub = step_schedules.karras(schedule, iv.n_steps - 1, rho, t_start=t_max,
                                            t_end=t_j)
                jump = (ts[j], schedule.alpha(ts[j]), jnp.asarray(st_main[j]))
                seg_restart.run(b, sub, jump_to=jump)
        start = j
    return b.build()


_REQUIRED = frozenset({"n_main", "intervals"})
_CONFIG_KEYS = _REQUIRED | {"base", "S_noise", "restart_gamma", "S_min", "S_max", "rho"}


def restart_edm(config: dict | None = None, schedule=None, **overrides) -> Plan:
    """Restart with the official EDM settings (default :data:`EDM_CIFAR10`, NFE 43).

    The main grid is EDM's: ``n_main`` Karras points from 80 to 0.002 (``rho = 7``)
    and a final 0, on ``schedule`` (default ``EDM()``); ``overrides`` replace
    entries of the configuration (e.g. ``intervals=...``).
    """
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"restart_edm: config must be a dict like EDM_CIFAR10, got {config!r} "
                        f"({type(config).__name__})")
    cfg = dict(EDM_CIFAR10 if config is None else config)
    cfg.update(overrides)
    unknown = sorted(str(k) for k in cfg if k not in _CONFIG_KEYS)
    if unknown:
        options = sorted(_CONFIG_KEYS - _REQUIRED)
        raise ValueError(f"restart_edm: unknown configuration key(s) {unknown}; expected "
                         f"n_main, intervals and restart's options {options}")
    missing = [k for k in ("n_main", "intervals") if k not in cfg]
    if missing:
        raise ValueError(f"restart_edm: the configuration lacks {missing} (see EDM_CIFAR10)")
    schedule = EDM() if schedule is None else schedule
    n_main = cfg.pop("n_main")
    if isinstance(n_main, bool) or not isinstance(n_main, int | np.integer) or n_main < 1:
        raise ValueError(f"restart_edm: n_main (main Karras steps) must be an integer >= 1, "
                         f"got {n_main!r}")
    ts = step_schedules.karras(schedule, n_main, 7.0, append_zero=True)
    return restart(schedule, ts, cfg.pop("intervals"), **cfg)


__all__ = ["EDM_CIFAR10", "EDM_IMAGENET64", "RestartInterval", "restart", "restart_edm"]
