"""Hand-made baselines for a search: registry solvers x step schedules, and
DPM-Solver++(2M) with gradient-optimized timesteps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import error_summary
from samplax.search.objective import Teacher, resolve_metric
from samplax.solvers._common import reaches_zero_noise
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.executor import sample
from samplax.solvers.registry import BASELINE_SOLVERS, STEP_SCHEDULES, get_solver, steps_for_nfe


def evaluate_baselines(denoiser, schedule, nfe: int, teacher: Teacher, *, t_start, t_end,
                       data=None, solvers=BASELINE_SOLVERS, step_schedules=tuple(STEP_SCHEDULES),
                       metric=None, progress=None):
    """Held-out error of every (solver, step schedule) pair that spends exactly ``nfe``.

    Returns ``{"solver/schedule": summary}`` plus ``"best"``: the pair with the
    lowest held-out median RMSE (the strongest possible baseline: chosen on the
    held-out set itself, in the baselines' favour). With a ``metric`` (a name or a
    function, :func:`samplax.search.objective.resolve_metric`), each summary also
    has its held-out value as ``"metric"``, and ``"best"`` is the lowest in it.
    ``progress(name)`` is called after each solver.
    """
    fn = None if metric is None else resolve_metric(metric)[1]
    run = jax.jit(lambda plan, x: sample(denoiser, plan, x))
    out = {}
    for name in solvers:
        spec = get_solver(name)
        try:
            n = steps_for_nfe(spec, nfe, reaches_zero_noise(schedule, jnp.asarray(t_end)))
        except ValueError:
            n = None
        for sname in step_schedules if n is not None else ():
            ts = STEP_SCHEDULES[sname](schedule, n, t_start, t_end)
            try:
                plan = spec.build(schedule, ts)
            except ValueError:
                continue
            samples = run(plan, teacher.x_eval)
            res = error_summary(samples, teacher.ref_eval, data)
            res["evaluations"] = int(teacher.x_eval.shape[0]) * plan.nfe
            if fn is not None:
                res["metric"] = float(fn(samples, teacher.ref_eval))
            if np.isfinite(res["median_rmse"]):
                out[f"{name}/{sname}"] = res
        if progress is not None:
            progress(name)
    if out:
        best = min(out, key=lambda k: out[k]["median_rmse" if fn is None else "metric"])
        out["best"] = {"name": best, **out[best]}
    return out


def optimize_times_2m(denoiser, schedule, nfe: int, teacher: Teacher, *, t_start, t_end,
                      data=None, iters: int = 200, lr: float = 0.05):
    """DPM-Solver++(2M) with timesteps optimized by Adam on the calibration set, from
    uniform log-SNR steps: the timesteps-only baseline of issue 5 (LD3-style,
    :func:`samplax.search.times_only.optimize_times`). Returns the held-out summary
    and the times."""
    from samplax.search.times_only import optimize_times

    ts, _ = optimize_times(denoiser, schedule, "dpm_solver_pp_2m", nfe, teacher,
                           t_start=t_start, t_end=t_end, iters=iters, lr=lr, start="logsnr")
    plan = dpm_solver_pp(schedule, ts, order=2)
    res = error_summary(jax.jit(lambda p, x: sample(denoiser, p, x))(plan, teacher.x_eval),
                        teacher.ref_eval, data)
    return {**res, "timesteps": np.asarray(ts).tolist()}
