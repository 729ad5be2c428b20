"""The timesteps of one named solver, learned: schedules other tools can use.

LD3 (Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs") keeps a
standard solver and learns only its timesteps from a few hundred teacher samples.
Such a schedule is a list of sigmas that diffusers, ComfyUI or k-diffusion run with
their own solver (:mod:`samplax.export`), which the full search's per-step choices,
free coefficients and fitted arrays are not.

The times are the search's parameterization (:func:`samplax.search.space.times_from_theta`:
the log-SNR increments are ``softmax(theta)`` of the fixed range ``lam(t_start)`` to
``lam(t_end)``), started from the registry's step schedule (:data:`STEP_SCHEDULES`)
that is best on the calibration noises, and moved by Adam through the sampler on the
calibration loss, the best iterate kept (:func:`samplax.optimize.make_minimizer`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import error_summary
from samplax.optimize import cosine_to, make_minimizer
from samplax.search.objective import Teacher, resolve_metric
from samplax.search.result import SCHEMA, schedule_description
from samplax.search.space import theta_from_times, times_from_theta
from samplax.solvers._common import reaches_zero_noise
from samplax.solvers.executor import sample
from samplax.solvers.registry import STEP_SCHEDULES, get_solver, steps_for_nfe


def solver_steps(solver: str, schedule, nfe: int, t_end) -> int:
    """The step count at which the registered ``solver`` spends exactly ``nfe``."""
    spec = get_solver(solver)
    return steps_for_nfe(spec, nfe, reaches_zero_noise(schedule, jnp.asarray(t_end)))


def optimize_times(denoiser, schedule, solver: str, nfe: int, teacher: Teacher, *, t_start,
                   t_end, iters: int = 200, lr: float = 0.05, lr_end: float | None = None,
                   metric=None, start: str | None = None):
    """The times of ``solver`` at exactly ``nfe`` evaluations, by Adam on the
    calibration noises.

    Args:
        denoiser, schedule: the model.
        solver: a name of :data:`samplax.solvers.registry.SOLVERS`.
        nfe: the exact budget.
        teacher: the calibration noises and the teacher's samples.
        t_start, t_end: fixed ends of the times (``sigma(t_end) > 0``).
        iters, lr, lr_end: Adam steps; the rate decays along a half cosine to
            ``lr_end`` when given.
        metric: ``"rmse"`` (default: mean per-sample RMSE), ``"energy"`` or a function
            (:func:`samplax.search.objective.resolve_metric`).
        start: the step schedule to start from; default: the one of
            :data:`STEP_SCHEDULES` of lowest calibration loss.

    Returns:
        ``(times, record)``: the times ``[n_steps + 1]`` and what was done
        (``start``, ``loss_before``, ``loss``, the start schedules' losses).
    """
    spec = get_solver(solver)
    n = solver_steps(solver, schedule, nfe, t_end)
    fn = resolve_metric(metric)[1]

    def loss(theta, _=None):
        ts = times_from_theta(schedule, theta, t_start, t_end)
        return fn(sample(denoiser, spec.build(schedule, ts), teacher.x_cal), teacher.ref_cal)

    value = jax.jit(loss)
    starts = {}
    for name in ([start] if start else STEP_SCHEDULES):
        if name not in STEP_SCHEDULES:
            raise ValueError(f"unknown step schedule {name!r}; choose one of "
                             f"{sorted(STEP_SCHEDULES)}")
        ts = STEP_SCHEDULES[name](schedule, n, t_start, t_end)
        theta = jnp.asarray(theta_from_times(schedule, ts), teacher.x_cal.dtype)
        starts[name] = (theta, float(value(theta)))
    finite = {k: v for k, v in starts.items() if np.isfinite(v[1])}
    if not finite:
        raise ValueError(f"{solver} gives a non-finite loss from every start schedule")
    first = min(finite, key=lambda k: finite[k][1])
    theta0, before = finite[first]
    out = make_minimizer(loss).run(theta0, iters=iters, lr=cosine_to(lr, lr_end, iters))
    after = float(out.loss)
    best = out.params if np.isfinite(after) and after <= before else theta0
    record = {"start": first, "start_losses": {k: v[1] for k, v in starts.items()},
              "iters": iters, "lr": lr, "loss_before": before, "loss": min(after, before)}
    return times_from_theta(schedule, best, t_start, t_end), record


def search_times(denoiser, schedule, solver: str, nfe: int, teacher: Teacher, *, t_start,
                 t_end, iters: int = 200, lr: float = 0.05, metric=None, data=None,
                 baselines: dict | None = None, model_name: str = "custom",
                 model_fingerprint: str | None = None) -> dict:
    """A times-only search result: :func:`optimize_times` measured on the calibration
    and held-out noises, as a result file (schema ``samplax.search/1`` with a
    ``solver`` field in place of ``steps``) that :func:`samplax.search.load_plan`,
    ``samplax sample`` and ``samplax export`` read."""
    began = time.perf_counter()
    ts, record = optimize_times(denoiser, schedule, solver, nfe, teacher, t_start=t_start,
                                t_end=t_end, iters=iters, lr=lr, metric=metric)
    plan = get_solver(solver).build(schedule, ts)
    assert plan.nfe == nfe, (plan.nfe, nfe)
    name, fn = resolve_metric(metric)
    run = jax.jit(lambda pl, x: sample(denoiser, pl, x))
    out_eval, out_cal = run(plan, teacher.x_eval), run(plan, teacher.x_cal)
    objective = {"heldout": error_summary(out_eval, teacher.ref_eval, data),
                 "calibration": error_summary(out_cal, teacher.ref_cal, data),
                 "n_heldout": int(teacher.x_eval.shape[0]),
                 "n_calibration": int(teacher.x_cal.shape[0]),
                 "metric": {"name": name, "heldout": float(fn(out_eval, teacher.ref_eval)),
                            "calibration": float(fn(out_cal, teacher.ref_cal))}}
    seconds = time.perf_counter() - began
    return {
        "schema": SCHEMA,
        "model": model_name,
        "model_fingerprint": model_fingerprint,
        "schedule": schedule_description(schedule),
        "solver": solver,
        "nfe": nfe,
        "t_start": float(t_start),
        "t_end": float(t_end),
        "timesteps": np.asarray(ts).tolist(),
        "objective": objective,
        "baselines": baselines or {},
        "search": {"times_only": record, "seconds": seconds,
                   "candidates_per_second": (len(record["start_losses"]) + iters) / seconds},
    }


__all__ = ["optimize_times", "search_times", "solver_steps"]
