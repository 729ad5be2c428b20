"""``search``: the best plan of an exact NFE budget for a model, by a pipeline of phases.

The default pipeline (:data:`samplax.search.config.DEFAULT_PHASES`), one line a phase:

- ``dp_times``: optional GITS dynamic-programming start times (:mod:`samplax.search.dp`);
- ``population``: per structure (with/without the analytical first step), generations
  of per-step choices evaluated in one ``vmap``, the elites refined by Adam through
  the sampler (:mod:`samplax.search.population`);
- ``refine`` and ``polish``: long Adam refinements of each structure's finalists;
- ``plan_fit``: every coefficient and network time of the best plan, by
  Levenberg-Marquardt (:mod:`samplax.search.free_plan`);
- ``output_fit``: the output combination per coordinate in closed form
  (:mod:`samplax.search.output_fit`);
- ``coordinate_fit``: every slot's coefficients per coordinate, by Adam on extra
  fitting noises (:mod:`samplax.search.coordinate_fit`).

Each phase is a small object (:mod:`samplax.search.phases`) that updates a typed
state (:mod:`samplax.search.state`); one driver (:mod:`samplax.search.driver`) runs
the list with a checkpoint after every step and a time limit. Selection uses the
calibration noises only; the reported figures are on held-out noises. The result
file and the checkpoint are two JSON views of the state, so an interrupted search
resumes where it stopped and reaches the same result, and a saved result continues
with more phases (:func:`continue_search`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from samplax.metrics import error_summary
from samplax.search.config import SearchConfig
from samplax.search.context import Context, Objective
from samplax.search.cost import adam, sampling
from samplax.search.devices import noise_mesh, spread_denoiser
from samplax.search.driver import Clock, Progress, run_phases
from samplax.search.phases import Population
from samplax.search.population import trajectory_error
from samplax.search.result import atomic_write_json
from samplax.search.space import times_from_theta
from samplax.search.state import (
    SearchState,
    current_plan,
    from_result,
    state_from_json,
    state_to_json,
    teacher_cost,
    to_result,
)
from samplax.solvers.executor import sample


def search(denoiser, schedule, nfe: int, teacher, *, t_start, t_end,
           config: SearchConfig | None = None, metric=None, checkpoint: str | Path | None = None,
           resume: bool = True, time_limit: float | None = None, progress: bool = True,
           data=None, baselines: dict | None = None, model_name: str = "custom",
           model_fingerprint: str | None = None, max_evals: int | None = None,
           mesh=None) -> dict:
    """Search the best plan of exactly ``nfe`` evaluations for ``denoiser``.

    Args:
        denoiser, schedule: the model (``D(x, t) -> x0_hat``) and its noise schedule.
        nfe: the exact budget; every candidate costs exactly ``nfe`` evaluations.
        teacher: calibration and held-out noises with the teacher's samples
            (:func:`samplax.search.objective.make_teacher`; ``config.teacher_needs``
            says which extra noises and trajectories the pipeline uses).
        t_start, t_end: the ends of the sampling interval (fixed).
        config: :class:`~samplax.search.config.SearchConfig` (phases and space).
        metric: what to minimize on the calibration noises: ``"rmse"`` (default, the
            mean per-sample RMSE; the last fits then use their own ``loss``),
            ``"energy"`` (the energy distance to the teacher's samples), or any
            ``fn(samples, ref) -> scalar`` (lower is better, differentiable). With a
            metric other than ``"rmse"`` the plan fit uses Adam on it and the
            per-sample fits are skipped.
        checkpoint: a JSON file written after every step of every phase (by process 0
            when ``jax.distributed`` runs several); with ``resume`` an existing one (of
            the same problem and config) is continued, by every process.
        time_limit: seconds; once exceeded no new step starts, the phases left are
            recorded as skipped, and the best so far is reported.
        progress: show progress (a bar on a terminal, plain lines elsewhere).
        data: the data model, if it can tell mixture components (reported).
        baselines: held-out summaries of hand-made solvers to record beside the
            result (:func:`samplax.search.baselines.evaluate_baselines`).
        model_name: recorded in the result.
        model_fingerprint: recorded in the result and part of the checkpoint's identity
            (:func:`samplax.models.builtin.model_fingerprint`): a checkpoint of
            another model is not resumed, and the CLI refuses to use the result with
            another model.
        max_evals: the most network evaluations of one sample the search may spend,
            the teacher's included (its calibration and fitting solves; the held-out
            report is not counted, :mod:`samplax.search.cost`). Each phase gets a
            share planned up front and is cut to it (fewer generations or
            iterations) or skipped; a budget that does not cover the teacher and
            one generation of the population is refused before any search work.
        mesh: the devices the network evaluations are split over, along the noise
            axis (:mod:`samplax.search.devices`): a ``jax.sharding.Mesh``, a device
            count, or ``None`` for every visible device (one on a plain CPU). Results
            equal the one-device search's up to the reductions' rounding; the
            checkpoint does not depend on it (resume on another device count).
            Make the teacher with the same ``mesh`` to split its solves too.

    Returns:
        The result as a JSON-ready dict (schema ``samplax.search/1``); save it with
        :func:`samplax.search.result.atomic_write_json`, load with ``load_plan``.
    """
    config = config or SearchConfig()
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    objective = Objective.of(metric, config.trajectory_weight)
    mesh = noise_mesh(mesh)
    denoiser = spread_denoiser(denoiser, mesh)
    if objective.trajectory_weight and teacher.traj_cal is None:
        raise ValueError("trajectory_weight > 0 needs the teacher's trajectories: "
                         f"make_teacher(..., n_grid={config.trajectory_grid})")
    ctx = Context(denoiser, schedule, nfe, teacher, t_start, t_end, config.space, objective,
                  config.seed)
    ident = {"nfe": nfe, "config": config.key(), "model": model_name,
             "n_cal": int(teacher.x_cal.shape[0]),
             "n_fit": 0 if teacher.x_fit is None else int(teacher.x_fit.shape[0]),
             "metric": objective.metric_name}
    if model_fingerprint is not None:
        ident["model_fingerprint"] = model_fingerprint
    budget = None
    if max_evals is not None:
        ident["max_evals"] = int(max_evals)
        budget = phase_budget(max_evals, config, ctx)
    state = SearchState.new(ident)
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = _load_checkpoint(checkpoint, ident, ctx)
    # on several hosts every process runs the same search; one writes the checkpoint
    # and all resume from it (a file system they share)
    save = None if checkpoint is None or jax.process_index() != 0 else (
        lambda s: atomic_write_json(checkpoint, state_to_json(s)))
    bar = Progress(sum(p.units(ctx) for p in config.phases), "search", progress)
    try:
        state = run_phases(config.phases, state, ctx, save=save, progress=bar,
                           clock=Clock.started(state.seconds, time_limit), budget=budget)
    finally:
        bar.close()
    if state.best() is None:
        why = "; ".join(f"{k}: {v}" for k, v in state.skipped.items())
        raise RuntimeError(f"no candidate was refined ({why or 'no phase made one'})")
    result = report(state, ctx, config, data=data, baselines=baselines, model_name=model_name)
    result["devices"] = 1 if mesh is None else mesh.size
    return result if model_fingerprint is None else dict(result,
                                                         model_fingerprint=model_fingerprint)


def smallest_budget(config: SearchConfig, n_cal: int, nfe: int, teacher: int) -> int:
    """The smallest sensible ``max_evals``: the teacher's ``teacher`` evaluations and
    the population's smallest useful cut (one generation of each structure, its first
    candidates refined)."""
    pop = next((p for p in config.phases if isinstance(p, Population)), Population())
    gen = sampling(n_cal, nfe, pop.size) + adam(n_cal, nfe, pop.refine_iters,
                                                 min(pop.elites, pop.size))
    return teacher + gen.total * len(config.space.structures(nfe))


def phase_budget(max_evals: int, config: SearchConfig, ctx) -> int:
    """What ``max_evals`` leaves the phases once the teacher is paid; refuses a budget
    below :func:`smallest_budget`."""
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer, got {max_evals!r}")
    teacher = teacher_cost(ctx.teacher)
    if teacher is None:
        raise ValueError("max_evals needs a teacher that counts its evaluations "
                         "(make_teacher's default solve, or a solve returning (x, calls))")
    least = smallest_budget(config, int(ctx.teacher.x_cal.shape[0]), ctx.nfe, teacher.total)
    if max_evals < least:
        raise ValueError(f"max_evals={max_evals} is too small: the teacher spent "
                         f"{teacher.total} and one generation of each structure of the "
                         f"population needs {least - teacher.total}; the smallest sensible "
                         f"budget is {least} (or fewer calibration noises)")
    return max_evals - teacher.total


def _load_checkpoint(path, ident: dict, ctx) -> SearchState:
    try:
        with open(path) as f:
            obj = json.load(f)
        state = state_from_json(obj, ctx)
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path} cannot be resumed ({e}); delete it or pass "
                         "resume=False") from None
    if state.ident != ident:
        raise ValueError(f"checkpoint {path} belongs to another search ({state.ident}); "
                         "delete it or pass resume=False")
    return state


def report(state: SearchState, ctx, config: SearchConfig, *, data=None, baselines=None,
           model_name: str = "custom") -> dict:
    """The result of a state: its plan measured on the calibration and held-out noises."""
    plan, teacher, metric = current_plan(state, ctx), ctx.teacher, ctx.objective.metric
    assert plan.nfe == ctx.nfe, (plan.nfe, ctx.nfe)
    run = jax.jit(lambda pl, x: sample(ctx.denoiser, pl, x))
    out_eval, out_cal = run(plan, teacher.x_eval), run(plan, teacher.x_cal)
    trajectory = None
    if teacher.traj_cal is not None:
        st, cand = state.best()
        ts = times_from_theta(ctx.schedule, cand.params.theta, ctx.t_start, ctx.t_end)
        traj = sample(ctx.denoiser, plan, teacher.x_cal, return_trajectory=True)[1]
        trajectory = {"weight": ctx.objective.trajectory_weight,
                      "calibration": float(trajectory_error(teacher, ctx.schedule, traj, ts,
                                                            st.afs))}
    objective = {"heldout": error_summary(out_eval, teacher.ref_eval, data),
                 "calibration": error_summary(out_cal, teacher.ref_cal, data),
                 "n_heldout": int(teacher.x_eval.shape[0]),
                 "n_calibration": int(teacher.x_cal.shape[0]),
                 "metric": {"name": ctx.objective.metric_name,
                            "heldout": float(metric(out_eval, teacher.ref_eval)),
                            "calibration": float(metric(out_cal, teacher.ref_cal))},
                 "trajectory": trajectory}
    n_cal, n_eval = teacher.x_cal.shape[0], teacher.x_eval.shape[0]
    report_cost = sampling(n_eval + n_cal * (1 if trajectory is None else 2), ctx.nfe)
    return to_result(state, ctx, objective=objective, config=config.to_json(),
                     baselines=baselines, model_name=model_name, report_cost=report_cost)


def continue_search(result: dict, phases, denoiser, schedule, teacher, *,
                    config: SearchConfig | None = None, metric=None, data=None) -> dict:
    """A saved result (:func:`samplax.search.result.load_result`) with ``phases``
    (re)done on it, e.g. ``[PlanFit()]`` on a result saved before that phase existed
    (pass ``dict(result, tuned_plan=None)`` to start from the described plan), its
    objective re-measured on the teacher's calibration and held-out noises (the ones
    it was searched with)."""
    config = config or SearchConfig()
    ctx = Context(denoiser, schedule, int(result["nfe"]), teacher, result["t_start"],
                  result["t_end"], config.space,
                  Objective.of(metric, config.trajectory_weight), config.seed)
    state = from_result(result, ctx)
    redo = {p.name for p in phases}
    state = state._replace(records={k: v for k, v in state.records.items() if k not in redo})
    state = run_phases(phases, state, ctx)
    out = report(state, ctx, config, data=data, baselines=result.get("baselines"),
                 model_name=result.get("model", "custom"))
    # the searched description and its bookkeeping stay the saved result's
    keep = ("timesteps", "steps", "afs", "coefficients", "model_times", "model_fingerprint")
    search = dict(result.get("search") or {}, **{k: out["search"][k] for k in (
        "plan_tuning", "output_fit", "coordinate_fit", "phases", "skipped",
        "phase_seconds")})
    return dict(out, **{k: result[k] for k in keep if k in result}, search=search,
                cost=_continued_cost(result.get("cost"), out["cost"]))


def _continued_cost(saved: dict | None, new: dict) -> dict:
    """The saved search's cost with the phases redone on it added (their new counts
    replace the saved ones of the same name)."""
    if not saved:
        return new
    phases = {**saved.get("phases", {}), **new["phases"]}
    spent = sum(c["total"] for c in phases.values())
    teacher = saved.get("teacher")
    return dict(saved, phases=phases, excluded=new["excluded"],
                evaluations=spent + (teacher["total"] if teacher else 0))


__all__ = ["SearchConfig", "continue_search", "phase_budget", "report", "search",
           "smallest_budget"]
