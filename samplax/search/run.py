"""The default search strategy: memetic search over per-step choices and times.

For an exact NFE budget and each structure (with and without the analytical
first step), a population of per-step choices (USF decision space) is
evaluated in one ``vmap``; the elites' times, free coefficients and network-time
offsets are refined with Adam through the sampler; mutations of the elites
(keeping their refined parameters) form the next generation; the best few get a
long final refinement; then every coefficient of the best plan and its network
times are tuned freely (:mod:`samplax.search.free_plan`), the NFE unchanged; last,
its output combination is fitted per coordinate in closed form
(:mod:`samplax.search.output_fit`), and, when the teacher has extra fitting noises
(``make_teacher(n_fit=...)``), every slot's coefficients per coordinate by Adam
(:mod:`samplax.search.coordinate_fit`); both per-coordinate fits work in the principal
components of the teacher's samples or in the sample's own coordinates, whichever
the output fit does better in (:mod:`samplax.search.basis`).
Selection uses calibration noises only, by the mean per-sample RMSE against the
teacher or another metric (``search(..., metric=)``: the energy distance, or any
function of the samples and the teacher's); the reported figures are on held-out
noises. Every finished generation is written to a
checkpoint, so an interrupted search resumes where it stopped and, with the same
seed, reaches the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import error_summary
from samplax.search.basis import BASES, MAX_DIM, resolved, start_in
from samplax.search.coordinate_fit import fit_coordinates, fitting_noises
from samplax.search.dp import dp_timesteps
from samplax.search.free_plan import METHODS, tune_plan
from samplax.search.objective import Teacher, check_loss, resolve_metric
from samplax.search.output_fit import fit_output_in
from samplax.search.population import Evaluator, Params, stack, trajectory_error
from samplax.search.result import (
    SCHEMA,
    atomic_write_json,
    schedule_description,
    tuned_plan_to_json,
    with_tuned_plan,
)
from samplax.search.space import mutate_steps, random_steps, theta_from_times, times_from_theta
from samplax.solvers.executor import sample
from samplax.solvers.usf import MAX_ORDER, Choices, Step, usf


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Knobs of the default strategy; the defaults need no tuning."""

    population: int = 48
    generations: int = 6
    elites: int = 4
    refine_iters: int = 40
    final_iters: int = 300
    # then a second final phase of this many Adam steps, the learning rate decaying
    # from lr/5 to lr/100 (the search is optimization-limited at 8+ NFE)
    polish_iters: int = 300
    # last, every coefficient of the best plan and its network times fitted
    # (samplax.search.free_plan): at most this many Levenberg-Marquardt steps on
    # plan_loss (a name in samplax.search.objective.LOSSES), or with
    # plan_method="adam" this many Adam steps at plan_lr decaying to 1/100; 0: off
    plan_iters: int = 40
    plan_method: str = "lm"
    plan_loss: str = "log_rmse"
    plan_lr: float = 0.003
    # then the output combination fitted per coordinate, with an offset, in closed
    # form (samplax.search.output_fit), kept only if a cross-check within the
    # calibration noises prefers it
    output_fit: bool = True
    # last, when the teacher has extra fitting noises (make_teacher(n_fit=...); the
    # CLI draws 2048), every slot's coefficients per coordinate: this many Adam steps
    # peaking at coordinate_lr (samplax.search.coordinate_fit), the iterate chosen on
    # a quarter of the noises kept out of the fit; 0: off
    coordinate_iters: int = 400
    coordinate_lr: float = 3e-4
    # the coordinates of both per-coordinate fits: "pca", the principal components of
    # the teacher's calibration and fitting samples (samplax.search.basis), for samples
    # of at most basis_max_dim entries; "none": the sample's own coordinates; "auto":
    # the output fit is done in both and the better one kept for both fits
    basis: str = "auto"
    basis_max_dim: int = MAX_DIM
    finalists: int = 2
    lr: float = 0.05
    afs: tuple = (False, True)
    orders: tuple = (1, 2, 3, 4)
    free_coefficients: bool = True
    model_times: bool = True
    seed: int = 0
    # > 0: the structured search (population and Adam refinement) also minimizes this
    # weight times the mean per-sample RMSE of the intermediate states against the
    # teacher's trajectories (make_teacher(n_grid=...); the CLI keeps 65 points);
    # the last phases (plan_iters, output_fit, coordinate_iters) fit the final sample
    # only and are then skipped
    trajectory_weight: float = 0.0
    # > 0: start every candidate's times from the GITS dynamic-programming times on a
    # grid of this many log-SNR intervals (samplax.search.dp); 0: uniform log-SNR
    dp_grid: int = 0

    def __post_init__(self):
        if self.plan_method not in METHODS:
            raise ValueError(f"unknown plan_method {self.plan_method!r}; "
                             f"choose one of {list(METHODS)}")
        check_loss(self.plan_loss)
        if self.basis not in BASES:
            raise ValueError(f"unknown basis {self.basis!r}; choose one of {list(BASES)}")
        if not self.trajectory_weight >= 0:
            raise ValueError(f"trajectory_weight must be >= 0, got {self.trajectory_weight}")

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def _free(config: SearchConfig):
    free = ["theta"]
    if config.free_coefficients:
        free.append("coefficients")
    if config.model_times:
        free.append("shift")
    return tuple(free)


def _steps_to_json(steps):
    return [{"prediction": s.prediction, "order": s.order, "corrector": s.corrector}
            for s in steps]


def _steps_from_json(items):
    return tuple(Step(d["prediction"], int(d["order"]), bool(d["corrector"])) for d in items)


def _params_to_json(p: Params):
    return {k: np.asarray(v).tolist() for k, v in p._asdict().items()}


def _params_from_json(d):
    return Params(*(jnp.asarray(d[k]) for k in Params._fields))


def _seed_steps(n: int, orders) -> list[tuple[Step, ...]]:
    """Uniform choice sets: every (prediction, order, corrector) on all steps."""
    return [tuple([Step(p, o, c)] * n) for p in ("data", "noise") for o in orders
            for c in (False, True)]


_EVALUATORS: dict = {}


def _evaluator(denoiser, schedule, n, afs, t_start, t_end, teacher, metric=None,
               trajectory_weight=0.0) -> Evaluator:
    """Reuse compiled evaluators across calls on the same objects (e.g. a resumed
    search in the same process); keyed by identity, a handful kept."""
    key = (id(denoiser), id(schedule), n, afs, float(t_start), float(t_end),
           id(teacher.x_cal), id(teacher.ref_cal), id(metric), float(trajectory_weight),
           id(teacher.traj_cal))
    if key not in _EVALUATORS:
        if len(_EVALUATORS) >= 8:
            _EVALUATORS.pop(next(iter(_EVALUATORS)))
        # keep the keyed objects alive with the evaluator so ids stay unique
        _EVALUATORS[key] = (Evaluator(denoiser, schedule, n, afs, t_start, t_end,
                                      teacher.x_cal, teacher.ref_cal, metric,
                                      (teacher, trajectory_weight) if trajectory_weight
                                      else None),
                            (denoiser, schedule, teacher, metric))
    return _EVALUATORS[key][0]


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="search", unit="gen")
            except ImportError:  # tqdm is an optional extra
                self.bar = None
        self.enabled = enabled

    def update(self, best: float, note: str):
        if self.bar is not None:
            self.bar.set_postfix_str(f"best {best:.4g} {note}")
            self.bar.update(1)
        elif self.enabled:
            print(f"[search] {note}: best calibration loss {best:.4g}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def search(
    denoiser,
    schedule,
    nfe: int,
    teacher: Teacher,
    *,
    t_start,
    t_end,
    config: SearchConfig | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    time_limit: float | None = None,
    data=None,
    baselines: dict | None = None,
    model_name: str = "custom",
    progress: bool = True,
    metric=None,
) -> dict:
    """Search the best plan of exactly ``nfe`` evaluations for ``denoiser``.

    Args:
        denoiser, schedule: the model (``D(x, t) -> x0_hat``) and its noise schedule.
        nfe: the exact budget; every candidate costs exactly ``nfe`` evaluations.
        teacher: calibration and held-out noises with the teacher's samples
            (:func:`samplax.search.objective.make_teacher`).
        t_start, t_end: the ends of the sampling interval (fixed).
        config: :class:`SearchConfig`.
        checkpoint: a JSON file written after every generation; with ``resume``
            an existing one (of the same problem and config) is continued.
        time_limit: seconds; when exceeded, no new generation starts and the
            best so far is finalized.
        data: the data model, if it can tell mixture components (reported).
        baselines: held-out summaries of hand-made solvers to record beside the
            result (see :func:`samplax.search.baselines.evaluate_baselines`).
        metric: what to minimize on the calibration noises: ``"rmse"`` (default,
            the mean per-sample RMSE, then the mean ``config.plan_loss`` of it in
            the last phases), ``"energy"`` (the energy distance between the samples
            and the teacher's, a distribution distance), or any function
            ``fn(samples, ref) -> scalar`` (lower is better, differentiable with
            JAX). With a metric other than ``"rmse"``, the free-plan phase uses
            Adam (``config.plan_lr``) on it, and the output and per-coordinate fits,
            which fit per-sample residuals, are skipped. The result records the
            metric on the calibration and held-out noises.

    Returns:
        The result as a JSON-ready dict (schema ``samplax.search/1``); save it with
        :func:`samplax.search.result.atomic_write_json`, load with ``load_plan``.
    """
    config = config or SearchConfig()
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    metric_name, metric_fn = resolve_metric(metric)
    custom = metric_name != "rmse"
    if config.trajectory_weight and teacher.traj_cal is None:
        raise ValueError("trajectory_weight > 0 needs the teacher's trajectories: "
                         "make_teacher(..., n_grid=65)")
    afs_options = [a for a in config.afs if nfe + int(a) >= 2 or not a]
    t0 = time.perf_counter()
    ident = {"nfe": nfe, "config": config.key(), "model": model_name,
             "n_cal": int(teacher.x_cal.shape[0]),
             "n_fit": 0 if teacher.x_fit is None else int(teacher.x_fit.shape[0]),
             "metric": metric_name}
    state = None
    if checkpoint is not None and resume and Path(checkpoint).exists():
        with open(checkpoint) as f:
            state = json.load(f)
        if state.get("ident") != ident:
            raise ValueError(
                f"checkpoint {checkpoint} belongs to another search ({state.get('ident')}); "
                "delete it or pass resume=False"
            )
    if state is None:
        state = {"ident": ident, "structures": {}, "evaluations": 0, "refine_steps": 0,
                 "seconds": 0.0}
    elapsed0 = state["seconds"]

    def save():
        state["seconds"] = elapsed0 + time.perf_counter() - t0
        if checkpoint is not None:
            atomic_write_json(checkpoint, state)

    bar = _Progress(len(afs_options) * (config.generations + 1), progress)
    free = _free(config)
    for afs in afs_options:
        key = f"afs={int(afs)}"
        st = state["structures"].setdefault(key, {"generation": 0, "done": False})
        if st["done"]:
            bar.update(st["best_loss"], f"{key} (resumed, done)")
            continue
        n = nfe + int(afs)
        ev = _evaluator(denoiser, schedule, n, afs, t_start, t_end, teacher, metric_fn,
                        config.trajectory_weight)
        if "init" not in st:
            init = Params.zeros(n, afs)
            if config.dp_grid:
                ts, _ = dp_timesteps(denoiser, schedule, n, teacher.x_cal[:32],
                                     t_start=t_start, t_end=t_end, grid=config.dp_grid)
                init = init._replace(theta=jnp.asarray(theta_from_times(schedule, ts)))
            st["init"] = _params_to_json(init)
        init = _params_from_json(st["init"])
        if st["generation"] == 0:
            rng = np.random.default_rng([config.seed, int(afs)])
            pop = _seed_steps(n, config.orders)
            while len(pop) < config.population:
                pop.append(random_steps(rng, n, orders=config.orders))
            st["pop"] = [_steps_to_json(s) for s in pop[: config.population]]
            st["params"] = [st["init"]] * len(st["pop"])
            st["rng"] = rng.bit_generator.state
            st["archive"] = []
        while st["generation"] < config.generations:
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
            rng = np.random.default_rng()
            rng.bit_generator.state = st["rng"]
            steps = [_steps_from_json(s) for s in st["pop"]]
            params = stack([_params_from_json(p) for p in st["params"]])
            choices = stack([Choices.from_steps(s) for s in steps])
            losses = np.asarray(ev.batch_loss(params, choices))
            losses = np.where(np.isfinite(losses), losses, np.inf)
            state["evaluations"] += len(steps)
            order = np.argsort(losses, kind="stable")[: config.elites]
            sub = lambda t, idx=order: jax.tree.map(lambda a: a[idx], t)
            ref_p, ref_l = ev.refine(sub(params), sub(choices), iters=config.refine_iters,
                                     lr=config.lr, free=free)
            state["refine_steps"] += config.refine_iters * len(order)
            ref_l = np.asarray(ref_l)
            elites = []
            for j, i in enumerate(order):
                p = jax.tree.map(lambda a, j=j: a[j], ref_p)
                elites.append((float(ref_l[j]), steps[i], p))
                st["archive"].append({"loss": float(ref_l[j]), "steps": _steps_to_json(steps[i]),
                                      "params": _params_to_json(p)})
            st["archive"] = sorted(st["archive"], key=lambda a: a["loss"])[: config.finalists * 4]
            # next generation: elites, their mutations (inheriting parameters), randoms
            new_steps = [e[1] for e in elites]
            new_params = [e[2] for e in elites]
            while len(new_steps) < config.population:
                parent = elites[int(rng.integers(len(elites)))]
                if rng.random() < 0.85:
                    new_steps.append(mutate_steps(rng, parent[1], orders=config.orders))
                    new_params.append(parent[2])
                else:
                    new_steps.append(random_steps(rng, n, orders=config.orders))
                    new_params.append(init)
            st["pop"] = [_steps_to_json(s) for s in new_steps]
            st["params"] = [_params_to_json(p) for p in new_params]
            st["rng"] = rng.bit_generator.state
            st["generation"] += 1
            st["best_loss"] = st["archive"][0]["loss"]
            save()
            bar.update(st["best_loss"], f"{key} gen {st['generation']}")
        if not st["archive"]:  # the time limit struck before a first generation
            continue
        # final: long refinement of the best distinct finalists
        seen, finals = set(), []
        for a in st["archive"]:
            k = json.dumps(a["steps"])
            if k not in seen:
                seen.add(k)
                finals.append(a)
            if len(finals) == config.finalists:
                break
        steps = [_steps_from_json(a["steps"]) for a in finals]
        params = stack([_params_from_json(a["params"]) for a in finals])
        choices = stack([Choices.from_steps(s) for s in steps])
        fp, fl = ev.refine(params, choices, iters=config.final_iters, lr=config.lr / 2, free=free)
        state["refine_steps"] += config.final_iters * len(finals)
        if config.polish_iters:  # same population shape: no new compilation
            fp, fl = ev.refine(fp, choices, iters=config.polish_iters, lr=config.lr / 5,
                               lr_end=config.lr / 100, free=free)
            state["refine_steps"] += config.polish_iters * len(finals)
        fl = np.asarray(fl)
        b = int(np.argmin(fl))
        st["final"] = {"loss": float(fl[b]), "steps": _steps_to_json(steps[b]),
                       "params": _params_to_json(jax.tree.map(lambda a, b=b: a[b], fp))}
        st["best_loss"] = float(fl[b])
        st["done"] = True
        save()
        bar.update(st["best_loss"], f"{key} final")
    bar.close()

    done = {k: v for k, v in state["structures"].items() if v.get("done")}
    if not done:
        raise RuntimeError("the time limit ended the search before any structure finished")
    best_key = min(done, key=lambda k: done[k]["final"]["loss"])
    afs = best_key == "afs=1"
    fin = done[best_key]["final"]
    steps = _steps_from_json(fin["steps"])
    p = _params_from_json(fin["params"])
    ts = times_from_theta(schedule, p.theta, t_start, t_end)
    eval_ts = ts[1:-1] if afs else ts[:-1]
    model_times = schedule.t_of_lam(schedule.lam(eval_ts) + p.shift)
    coefs = p.coefficients if config.free_coefficients else None
    plan = usf(schedule, ts, steps, afs=afs, coefficients=coefs,
               model_times=model_times if config.model_times else None)
    tuning = state.get("tuned")
    if tuning is not None and tuning["structure"] != best_key:
        tuning = None
    in_time = lambda: time_limit is None or time.perf_counter() - t0 <= time_limit  # noqa: E731
    plan_method = "adam" if custom else config.plan_method
    # the last phases fit the final sample: they would undo a trajectory objective
    # (gmm64 NFE 5: intermediate error 0.0057 after the structured search, 0.13 after
    # them), so with one they are skipped; the two per-coordinate fits fit per-sample
    # residuals, so they are skipped for another metric too
    last_phases = not config.trajectory_weight
    residual_fits = last_phases and not custom

    def record(fitted, name, rec):
        nonlocal tuning
        tuning = dict(tuning or {"structure": best_key}, plan=tuned_plan_to_json(fitted),
                      **{name: rec})
        state["tuned"] = tuning
        save()

    def current():
        return plan if tuning is None else with_tuned_plan(plan, tuning["plan"])
    if config.plan_iters and last_phases and tuning is None and in_time():
        tuned, before, after = tune_plan(
            denoiser, schedule, plan, teacher.x_cal, teacher.ref_cal,
            iters=config.plan_iters, method=plan_method, loss=config.plan_loss,
            lr=config.plan_lr, lr_end=config.plan_lr / 100,
            metric=metric_fn if custom else None)
        tuning = {"structure": best_key, "plan": tuned_plan_to_json(tuned),
                  "loss_before": before, "loss": after}
        state["tuned"] = tuning
        state["refine_steps"] += config.plan_iters
        save()
    # the output fit follows the free-plan fit (or, with plan_iters=0, the plan)
    fitted_plan = tuning is not None and "loss" in tuning
    done = lambda name: name in (tuning or {})  # noqa: E731
    if (config.output_fit and residual_fits and (fitted_plan or not config.plan_iters)
            and not done("output_fit") and in_time()):
        fitted, rec = fit_output_in(denoiser, current(), teacher, basis=config.basis,
                                    loss=config.plan_loss, max_dim=config.basis_max_dim)
        record(fitted, "output_fit", rec)
    # the per-coordinate fit follows both (or whichever of them is switched on)
    ready = ((fitted_plan or not config.plan_iters)
             and (not config.output_fit or done("output_fit")))
    if (config.coordinate_iters and residual_fits and teacher.x_fit is not None and ready
            and not done("coordinate_fit") and in_time()):
        x_fit, ref_fit = fitting_noises(teacher)
        start = start_in(current(), teacher,
                         resolved(config.basis, (tuning or {}).get("output_fit")),
                         config.basis_max_dim)
        fitted, before, after, applied = fit_coordinates(
            denoiser, start, x_fit, ref_fit, iters=config.coordinate_iters,
            lr=config.coordinate_lr, loss=config.plan_loss)
        state["refine_steps"] += config.coordinate_iters
        record(fitted, "coordinate_fit", {"applied": applied,
                                          "iters": config.coordinate_iters,
                                          "n_noises": int(x_fit.shape[0]),
                                          "loss_before": before, "loss": after})
    if tuning is not None:
        plan = with_tuned_plan(plan, tuning["plan"])
    assert plan.nfe == nfe, (plan.nfe, nfe)
    run = jax.jit(lambda pl, x: sample(denoiser, pl, x))
    out_eval, out_cal = run(plan, teacher.x_eval), run(plan, teacher.x_cal)
    held = error_summary(out_eval, teacher.ref_eval, data)
    cal = error_summary(out_cal, teacher.ref_cal, data)
    seconds = elapsed0 + time.perf_counter() - t0
    evals = state["evaluations"] + state["refine_steps"]
    return {
        "schema": SCHEMA,
        "model": model_name,
        "schedule": schedule_description(schedule),
        "nfe": nfe,
        "t_start": float(t_start),
        "t_end": float(t_end),
        "timesteps": np.asarray(ts).tolist(),
        "steps": _steps_to_json(steps),
        "afs": afs,
        "coefficients": None if coefs is None else np.asarray(coefs).tolist(),
        "model_times": np.asarray(model_times).tolist() if config.model_times else None,
        "tuned_plan": None if tuning is None else tuning["plan"],
        "objective": {"heldout": held, "calibration": cal,
                      "n_heldout": int(teacher.x_eval.shape[0]),
                      "n_calibration": int(teacher.x_cal.shape[0]),
                      "metric": {"name": metric_name,
                                 "heldout": float(metric_fn(out_eval, teacher.ref_eval)),
                                 "calibration": float(metric_fn(out_cal, teacher.ref_cal))},
                      "trajectory": None if teacher.traj_cal is None else {
                          "weight": config.trajectory_weight,
                          "calibration": float(trajectory_error(
                              teacher, schedule, sample(denoiser, plan, teacher.x_cal,
                                                        return_trajectory=True)[1],
                              ts, afs))}},
        "baselines": baselines or {},
        "search": {
            "config": dataclasses.asdict(config),
            "seconds": seconds,
            "population_evaluations": state["evaluations"],
            "refinement_steps": state["refine_steps"],
            "candidates_per_second": evals / max(seconds, 1e-9),
            "structures": {k: v.get("best_loss") for k, v in state["structures"].items()},
            "plan_tuning": None if tuning is None or "loss" not in tuning else {
                "iters": config.plan_iters, "method": plan_method,
                "loss_name": metric_name if custom else config.plan_loss,
                "loss_before": tuning["loss_before"],
                "loss": tuning["loss"]},
            "output_fit": None if tuning is None else tuning.get("output_fit"),
            "coordinate_fit": None if tuning is None else tuning.get("coordinate_fit"),
        },
    }


__all__ = ["MAX_ORDER", "SearchConfig", "search"]
