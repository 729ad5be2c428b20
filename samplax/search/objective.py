"""Objectives: error against a teacher on calibration noises, reported on held-out ones.

A search minimizes a metric of the plan's samples from the calibration noises
against the teacher's: by default the mean per-sample RMSE (and, in its last phases,
a robust mean of it, :data:`LOSSES`); or a distribution distance
(:func:`energy_distance`); or any function of the two batches (:data:`METRICS`,
:func:`resolve_metric`). Optionally the error of the intermediate states counts too,
against the teacher's trajectories (:func:`teacher_states`,
``SearchConfig.trajectory_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from samplax.metrics import error_summary, per_sample_rmse
from samplax.models.reference import (
    LAM_CAP,
    reference_solve,
    reference_tolerance,
    solve_dtype,
)
from samplax.search.devices import noise_mesh, spread_denoiser
from samplax.solvers.executor import sample


class Teacher(NamedTuple):
    """Initial noises and the teacher's final samples, split into two disjoint sets.

    ``x_cal``/``ref_cal`` drive the search; ``x_eval``/``ref_eval`` (drawn from a
    different key) are only used to report. The teacher is the float64 diffrax
    reference (:func:`make_teacher`) or any many-step solver for large models.
    """

    x_cal: jax.Array
    ref_cal: jax.Array
    x_eval: jax.Array
    ref_eval: jax.Array
    # optional extra calibration noises, only for the per-coordinate fit
    # (samplax.search.coordinate_fit), which has too many unknowns for x_cal alone
    x_fit: jax.Array | None = None
    ref_fit: jax.Array | None = None
    # optional teacher trajectories of the calibration noises, for an objective on
    # intermediate states (SearchConfig.trajectory_weight): x / alpha at the half
    # log-SNRs traj_lam [G] and its derivative in lam, [G, n_cal, *F] each
    traj_lam: jax.Array | None = None
    traj_cal: jax.Array | None = None
    dtraj_cal: jax.Array | None = None
    # sample-evaluations each part cost ({"calibration", "fitting", "heldout",
    # "trajectories"}; None: a solve that does not count its calls)
    evaluations: dict | None = None
    # what solved it: {"method": "dopri8", "rtol", "dtype"} for the default solve,
    # {"method": "custom"} for another
    solver: dict | None = None


def make_teacher(denoiser, schedule, x_T: Callable, t_start, t_end, *, n_cal=256, n_eval=1024,
                 n_fit=0, n_grid=0, seed=0, solve=None, batch=512, rtol=None,
                 progress: Callable[[int], None] | None = None, mesh=None) -> Teacher:
    """Draw disjoint calibration/evaluation noises and solve the PF-ODE for each.

    ``x_T(key, n)`` draws initial states; ``solve(x) -> x_end`` defaults to the
    diffrax float64 reference from ``t_start`` to ``t_end``. ``n_fit > 0`` adds that
    many more calibration noises (``x_fit``, from a third key, so the others do not
    change) for the per-coordinate fit. ``n_grid > 0`` also keeps the calibration
    noises' reference trajectories at that many half log-SNRs, uniform from
    ``t_start`` to ``t_end`` (capped at :data:`~samplax.models.reference.LAM_CAP`),
    with their derivatives, for :func:`teacher_states` (needs the default ``solve``).
    ``progress(n)`` is called after each batch of ``n`` noises solved. ``mesh``: the
    devices the solves' network calls are split over along the noise axis (as in
    :func:`samplax.search.run.search`; ``None``: every visible device). ``rtol``: the
    default solve's tolerance (:func:`~samplax.models.reference.reference_tolerance`
    of the noises' dtype: 1e-10 in float64, 1e-5 in float32, bfloat16 noises solved
    in float32); ``Teacher.solver`` records what ran.

    The teacher's cost is in ``evaluations`` (sample-evaluations per part): counted
    for the default solve; a custom ``solve`` may return ``(x_end, calls)``, the
    number of denoiser calls on its batch, to be counted too.
    """
    denoiser = spread_denoiser(denoiser, noise_mesh(mesh))
    k_cal, k_eval = jax.random.split(jax.random.key(seed))
    x_cal, x_eval = x_T(k_cal, n_cal), x_T(k_eval, n_eval)
    if solve is None:
        ts = jnp.array([t_start, t_end])
        dtype = solve_dtype(x_cal.dtype)
        rtol = reference_tolerance(dtype) if rtol is None else float(rtol)
        described = {"method": "dopri8", "rtol": rtol, "dtype": jnp.dtype(dtype).name}

        @jax.jit
        def solve(x):
            xs, calls = reference_solve(denoiser, schedule, x, ts, rtol=rtol,
                                        return_evaluations=True)
            return xs[-1], calls
    elif rtol is not None:
        raise ValueError("rtol is the default solve's tolerance; a custom solve sets its own")
    else:
        described = {"method": "custom"}

    spent = {}

    def run(x, part):
        out = []
        for i in range(0, x.shape[0], batch):
            y = solve(x[i:i + batch])
            if isinstance(y, tuple):
                y, calls = y
                if part in spent:
                    spent[part] += int(calls) * y.shape[0]
            else:
                spent.pop(part, None)  # not counted
            out.append(y)
            if progress is not None:
                progress(out[-1].shape[0])
        return jnp.concatenate(out)

    def solved(x, part):
        spent[part] = 0
        return run(x, part)

    if n_fit < 0 or n_grid < 0 or n_grid == 1:
        raise ValueError(f"n_fit must be >= 0 and n_grid 0 or >= 2, got {n_fit}, {n_grid}")
    teacher = Teacher(x_cal, solved(x_cal, "calibration"), x_eval, solved(x_eval, "heldout"))
    if n_fit:
        x_fit = x_T(jax.random.split(jax.random.key(seed), 3)[2], n_fit)
        teacher = teacher._replace(x_fit=x_fit, ref_fit=solved(x_fit, "fitting"))
    if n_grid:
        lo, hi = schedule.lam(jnp.asarray(t_start)), schedule.lam(jnp.asarray(t_end))
        lams = jnp.linspace(lo, jnp.minimum(hi, LAM_CAP), n_grid)
        ts = schedule.t_of_lam(lams)

        @jax.jit
        def trajectory(x):
            xs, calls = reference_solve(denoiser, schedule, x, ts, rtol=rtol,
                                        return_evaluations=True)
            expand = (...,) + (None,) * x.ndim
            xt = xs / schedule.alpha(ts)[expand]
            # the PF-ODE in x / alpha and lam (samplax.models.reference)
            d = jax.vmap(denoiser)(xs, ts) - xt
            return xt, d, calls + ts.shape[0]

        parts = [trajectory(x_cal[i:i + batch]) for i in range(0, n_cal, batch)]
        spent["trajectories"] = sum(int(p[2]) * p[0].shape[1] for p in parts)
        teacher = teacher._replace(traj_lam=lams,
                                   traj_cal=jnp.concatenate([p[0] for p in parts], axis=1),
                                   dtraj_cal=jnp.concatenate([p[1] for p in parts], axis=1))
    return teacher._replace(evaluations=spent if "calibration" in spent else None,
                            solver=described)


def teacher_states(teacher: Teacher, schedule, t) -> jax.Array:
    """The teacher's states ``[n_cal, *F]`` of the calibration noises at time ``t``
    (a scalar within the grid of ``make_teacher(n_grid=...)``): cubic Hermite
    interpolation of ``x / alpha`` in ``lam`` from the stored states and their
    derivatives (error ``O(h^4)`` in the grid step ``h``; exact at grid points),
    differentiable in ``t``."""
    if teacher.traj_lam is None:
        raise ValueError("this teacher has no trajectories: make_teacher(..., n_grid=G)")
    lams = teacher.traj_lam
    lam = jnp.clip(schedule.lam(t), lams[0], lams[-1])
    i = jnp.clip(jnp.searchsorted(lams, lam, side="right") - 1, 0, lams.shape[0] - 2)
    h = lams[i + 1] - lams[i]
    u = (lam - lams[i]) / h
    y0, y1 = teacher.traj_cal[i], teacher.traj_cal[i + 1]
    d0, d1 = teacher.dtraj_cal[i] * h, teacher.dtraj_cal[i + 1] * h
    h00, h10 = 2 * u ** 3 - 3 * u ** 2 + 1, u ** 3 - 2 * u ** 2 + u
    h01, h11 = -2 * u ** 3 + 3 * u ** 2, u ** 3 - u ** 2
    return schedule.alpha(t) * (h00 * y0 + h10 * d0 + h01 * y1 + h11 * d1)


def _log_rmse(s):
    # the floor keeps an exactly reproduced sample finite and stops a fit from
    # chasing float64 round-off once a sample is exact to 1e-12
    return jnp.log(s + 1e-12)


LOSSES: dict[str, Callable] = {
    # mean per-sample RMSE: smooth, and unlike the MSE not dominated by the few
    # samples that switch mixture components
    "mean_rmse": lambda s: s,
    # mean log RMSE (the log of the geometric mean): every sample's relative error
    # counts alike, so the fit serves the typical sample, i.e. the reported median,
    # instead of the heavy tail (digits, 8 NFE: held-out median 0.0033 fitted this
    # way vs 0.0038 fitted to the mean RMSE, the mean RMSE alike; on a mixture a few
    # samples may switch component instead: benchmarks/RESULTS.md)
    "log_rmse": _log_rmse,
    # between the two (a robust M-estimator's penalty, concave in the RMSE)
    "sqrt_rmse": lambda s: jnp.sqrt(s + 1e-12),
}


def check_loss(name: str) -> Callable:
    """The per-sample penalty of the RMSE named ``name`` (a key of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def plan_loss(denoiser, plan, x, ref, loss: str = "mean_rmse"):
    """``mean_i rho(rmse_i)`` of a plan's samples from ``x`` against the teacher's
    ``ref``, ``rho`` named by ``loss`` (:data:`LOSSES`; default the mean RMSE)."""
    return jnp.mean(check_loss(loss)(per_sample_rmse(sample(denoiser, plan, x), ref)))


def energy_distance(x, y):
    """Energy distance between the empirical distributions of two samples ``[n, *F]``
    and ``[m, *F]`` (Székely & Rizzo 2013, "Energy statistics: a class of statistics
    based on distances", Eq. 2.2 with expectations over the samples, the V-statistic):
    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``, in the units of ``x``; it is >= 0 and zero
    iff the two samples hold the same points. It compares distributions, not samples
    one by one (reordering ``y`` does not change it), so as a search metric
    (``search(..., metric="energy")``) it does not ask which teacher sample belongs to
    which noise. Its gradient is finite where samples coincide (there it takes the
    zero subgradient of the distance)."""
    x = jnp.reshape(x, (x.shape[0], -1))
    y = jnp.reshape(y, (y.shape[0], -1)).astype(x.dtype)

    def mean_dist(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        pos = d2 > 0
        return jnp.mean(jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0))  # no sqrt'(0)

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def mean_rmse(x, ref):
    """The mean per-sample RMSE of ``x`` against ``ref``: the search's default metric."""
    return jnp.mean(per_sample_rmse(x, ref))


# metrics of a batch of samples against the teacher's: lower is better
METRICS: dict[str, Callable] = {"rmse": mean_rmse, "energy": energy_distance}


def resolve_metric(metric) -> tuple[str, Callable]:
    """``(name, fn)`` for a metric given by name (:data:`METRICS`) or as a function
    ``fn(samples, ref) -> scalar`` (lower is better; differentiable with JAX for the
    search's gradient phases; its ``__name__`` names it in results and checkpoints)."""
    if metric is None:
        metric = "rmse"
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} "
                             "or pass a function fn(samples, ref) -> scalar")
        return metric, METRICS[metric]
    if not callable(metric):
        raise TypeError(f"metric must be a name or a function, got {type(metric).__name__}")
    return getattr(metric, "__name__", type(metric).__name__), metric


def evaluate_plan(denoiser, plan, x, ref, data=None) -> dict:
    """Median/mean RMSE (and wrong-component share) of a plan on given noises."""
    out = jax.jit(lambda p, x: sample(denoiser, p, x))(plan, x)
    return error_summary(out, ref, data)
