"""The search's state, typed, and its JSON form: the checkpoint, and the result file.

A search is a pipeline of phases (:mod:`samplax.search.phases`) over one
:class:`SearchState`: the structures' populations and archives, their refined
finalists, the current plan once a fit has changed it, each finished phase's record
and the counters. This module is the only place that turns it into JSON and back:
:func:`state_to_json` / :func:`state_from_json` for the checkpoint, :func:`to_result`
for the result file (schema ``samplax.search/1``, loaded by
:mod:`samplax.search.result`), and :func:`from_result` to continue a saved result
with more phases.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from samplax.search.cost import Cost
from samplax.search.population import Params
from samplax.search.result import (
    SCHEMA,
    ResultError,
    plan_from_result,
    tuned_plan_to_json,
    with_tuned_plan,
)
from samplax.search.space import candidate_times, theta_from_times
from samplax.solvers.usf import Step

STATE_SCHEMA = "samplax.search-state/1"


class Candidate(NamedTuple):
    """A point of the search space: per-step choices, continuous parameters, and its
    calibration loss."""

    steps: tuple[Step, ...]
    params: Params
    loss: float


class Structure(NamedTuple):
    """The population search of one structure (with or without the analytical first
    step): its starting parameters, the current generation and its population, the
    generator's state, the archive of refined elites and the finalists."""

    afs: bool
    init: Params
    generation: int = 0
    population: tuple[tuple[Step, ...], ...] = ()
    params: tuple[Params, ...] = ()
    rng: dict | None = None
    archive: tuple[Candidate, ...] = ()
    finalists: tuple[Candidate, ...] = ()

    @property
    def key(self) -> str:
        return structure_key(self.afs)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The finalists once refined, else the archive."""
        return self.finalists or self.archive

    @property
    def best(self) -> Candidate | None:
        return min(self.candidates, key=lambda c: c.loss, default=None)


def structure_key(afs: bool) -> str:
    return f"afs={int(afs)}"


class SearchState(NamedTuple):
    """Everything a search has done so far (see the module docstring).

    ``plan`` is ``None`` until a fitting phase sets it (before that, the plan is the
    best candidate's); ``records`` maps each finished phase to its record;
    ``skipped`` maps the phases this run skipped to the reason (not saved: it is
    decided anew on every run); ``counters`` count candidate evaluations and
    optimizer steps; ``timings`` the seconds spent in each phase; ``cost`` the
    network evaluations each phase made (:class:`samplax.search.cost.Cost`)."""

    ident: dict
    structures: dict
    plan: object = None
    records: dict = {}
    skipped: dict = {}
    counters: dict = {}
    seconds: float = 0.0
    timings: dict = {}
    cost: dict = {}

    @classmethod
    def new(cls, ident: dict) -> SearchState:
        return cls(ident, {}, None, {}, {},
                   {"population_evaluations": 0, "refinement_steps": 0}, 0.0, {}, {})

    def spent(self, name: str, cost: Cost) -> SearchState:
        """Phase ``name`` made the network evaluations ``cost``."""
        return self._replace(cost={**self.cost, name: self.cost.get(name, Cost()) + cost})

    def timed(self, name: str, seconds: float) -> SearchState:
        return self._replace(timings={**self.timings, name: self.timings.get(name, 0.0)
                                      + seconds})

    def with_structure(self, st: Structure) -> SearchState:
        return self._replace(structures={**self.structures, st.key: st})

    def with_record(self, name: str, record: dict, plan=None) -> SearchState:
        """Phase ``name`` finished with ``record`` (and, if given, this plan)."""
        return self._replace(records={**self.records, name: record},
                             plan=self.plan if plan is None else plan)

    def counted(self, **counts: int) -> SearchState:
        return self._replace(counters={k: v + counts.get(k, 0)
                                       for k, v in self.counters.items()})

    def best(self) -> tuple[Structure, Candidate] | None:
        """The structure and candidate of lowest calibration loss (first on ties)."""
        out = None
        for st in self.structures.values():
            c = st.best
            if c is not None and (out is None or c.loss < out[1].loss):
                out = (st, c)
        return out


def current_plan(state: SearchState, ctx):
    """The plan a fitting phase starts from: the last fit's, else the best candidate's."""
    if state.plan is not None:
        return state.plan
    best = state.best()
    if best is None:
        raise ValueError("the search has no candidate yet")
    return ctx.candidate_plan(best[1], best[0].afs)


# ------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------


def steps_to_json(steps) -> list:
    return [{"prediction": s.prediction, "order": s.order, "corrector": s.corrector}
            for s in steps]


def steps_from_json(items) -> tuple[Step, ...]:
    return tuple(Step(d["prediction"], int(d["order"]), bool(d["corrector"])) for d in items)


def params_to_json(p: Params) -> dict:
    return {k: np.asarray(v).tolist() for k, v in p._asdict().items()}


def params_from_json(d) -> Params:
    return Params(*(jnp.asarray(d[k]) for k in Params._fields))


def _candidate_to_json(c: Candidate) -> dict:
    return {"loss": c.loss, "steps": steps_to_json(c.steps), "params": params_to_json(c.params)}


def _candidate_from_json(d) -> Candidate:
    return Candidate(steps_from_json(d["steps"]), params_from_json(d["params"]),
                     float(d["loss"]))


def _structure_to_json(st: Structure) -> dict:
    best = st.best
    return {"afs": st.afs, "init": params_to_json(st.init), "generation": st.generation,
            "population": [steps_to_json(s) for s in st.population],
            "params": [params_to_json(p) for p in st.params], "rng": st.rng,
            "archive": [_candidate_to_json(c) for c in st.archive],
            "finalists": [_candidate_to_json(c) for c in st.finalists],
            "best_loss": None if best is None else best.loss}


def _structure_from_json(d) -> Structure:
    return Structure(bool(d["afs"]), params_from_json(d["init"]), int(d["generation"]),
                     tuple(steps_from_json(s) for s in d["population"]),
                     tuple(params_from_json(p) for p in d["params"]), d["rng"],
                     tuple(_candidate_from_json(c) for c in d["archive"]),
                     tuple(_candidate_from_json(c) for c in d["finalists"]))


def state_to_json(state: SearchState) -> dict:
    """The checkpoint: everything but ``skipped`` (decided anew on every run)."""
    return {"schema": STATE_SCHEMA, "ident": state.ident,
            "structures": {k: _structure_to_json(st) for k, st in state.structures.items()},
            "plan": None if state.plan is None else tuned_plan_to_json(state.plan),
            "records": state.records, "counters": state.counters, "seconds": state.seconds,
            "timings": state.timings,
            "cost": {k: c.to_json() for k, c in state.cost.items()}}


def state_from_json(obj: dict, ctx) -> SearchState:
    """A checkpoint back as a state; its plan is rebuilt on ``ctx``'s schedule."""
    if not isinstance(obj, dict) or obj.get("schema") != STATE_SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"not a search checkpoint of this samplax (schema {got!r}, expected "
                         f"{STATE_SCHEMA!r})")
    state = SearchState(obj["ident"],
                        {k: _structure_from_json(v) for k, v in obj["structures"].items()},
                        None, dict(obj["records"]), {}, dict(obj["counters"]),
                        float(obj["seconds"]), dict(obj["timings"]),
                        # a checkpoint written before costs were counted has none
                        {k: Cost.from_json(c) for k, c in obj.get("cost", {}).items()})
    if obj["plan"] is not None:
        best = state.best()
        state = state._replace(plan=with_tuned_plan(ctx.candidate_plan(best[1], best[0].afs),
                                                    obj["plan"]))
    return state


def teacher_cost(teacher) -> Cost | None:
    """The teacher's network evaluations for the search (its calibration, fitting and
    trajectory solves; the held-out ones only serve the report), None if uncounted."""
    ev = teacher.evaluations
    if ev is None:
        return None
    return Cost(forward=sum(v for k, v in ev.items() if k != "heldout"))


def cost_to_json(state: SearchState, ctx, report: Cost, baselines: dict | None) -> dict:
    """The result's ``cost``: ``evaluations``, the search's sample-evaluations (teacher
    included, held-out report excluded), then each part."""
    teacher = teacher_cost(ctx.teacher)
    search = sum(state.cost.values(), Cost())
    ev = ctx.teacher.evaluations or {}
    return {
        "evaluations": search.total + (teacher.total if teacher is not None else 0),
        "teacher_counted": teacher is not None,
        "teacher": None if teacher is None else teacher.to_json(),
        "phases": {k: c.to_json() for k, c in state.cost.items()},
        "excluded": {"teacher_heldout": ev.get("heldout"), "report": report.to_json(),
                     "baselines": sum(v.get("evaluations", 0)
                                      for k, v in (baselines or {}).items() if k != "best")},
    }


def to_result(state: SearchState, ctx, *, objective: dict, config: dict, baselines: dict,
              model_name: str, report_cost: Cost = Cost()) -> dict:
    """The result file (schema ``samplax.search/1``): the best candidate's description,
    the fitted plan's arrays, the measured ``objective`` and the phases' records."""
    st, cand = state.best()
    p, space = cand.params, ctx.space
    ts, model_times = candidate_times(ctx.schedule, p, st.afs, ctx.t_start, ctx.t_end)
    evals = state.counters["population_evaluations"] + state.counters["refinement_steps"]
    rec = state.records
    return {
        "schema": SCHEMA,
        "model": model_name,
        "schedule": ctx.schedule_description,
        "nfe": ctx.nfe,
        "t_start": float(ctx.t_start),
        "t_end": float(ctx.t_end),
        "timesteps": np.asarray(ts).tolist(),
        "steps": steps_to_json(cand.steps),
        "afs": st.afs,
        "coefficients": np.asarray(p.coefficients).tolist() if space.free_coefficients
        else None,
        "model_times": np.asarray(model_times).tolist() if space.model_times else None,
        "tuned_plan": None if state.plan is None else tuned_plan_to_json(state.plan),
        "objective": objective,
        "baselines": baselines or {},
        "cost": cost_to_json(state, ctx, report_cost, baselines),
        "teacher": ctx.teacher.solver,
        "search": {
            "config": config,
            "seconds": state.seconds,
            "population_evaluations": state.counters["population_evaluations"],
            "refinement_steps": state.counters["refinement_steps"],
            "candidates_per_second": evals / max(state.seconds, 1e-9),
            "structures": {k: None if s.best is None else s.best.loss
                           for k, s in state.structures.items()},
            "plan_tuning": rec.get("plan_fit"),
            "output_fit": rec.get("output_fit"),
            "coordinate_fit": rec.get("coordinate_fit"),
            "phases": {k: v for k, v in rec.items()
                       if k not in ("plan_fit", "output_fit", "coordinate_fit")},
            "skipped": state.skipped,
            "phase_seconds": state.timings,
        },
    }


def from_result(result: dict, ctx) -> SearchState:
    """A saved result (:func:`samplax.search.result.load_result`) as the state a
    pipeline continues from: its described candidate as the one finalist, its plan
    (fitted, if it was) as the current plan, and its phases' records."""
    if "_steps" not in result:
        raise ResultError("from_result needs a validated result (load_result)")
    if result.get("solver") is not None:
        raise ResultError(f"a times-only result ({result['solver']}) has no per-step "
                          "choices for the search's phases to continue from")
    schedule = ctx.schedule
    ts = jnp.asarray(result["timesteps"])
    afs, steps = bool(result["afs"]), tuple(result["_steps"])
    zeros = Params.zeros(len(steps), afs, ts.dtype)
    theta = jnp.asarray(theta_from_times(schedule, ts), ts.dtype)
    coefs = result.get("coefficients")
    shift = zeros.shift
    if result.get("model_times") is not None:
        eval_ts = ts[1:-1] if afs else ts[:-1]
        shift = schedule.lam(jnp.asarray(result["model_times"])) - schedule.lam(eval_ts)
    params = Params(theta, zeros.coefficients if coefs is None else jnp.asarray(coefs), shift)
    search = result.get("search") or {}
    cand = Candidate(steps, params, float("nan"))
    st = Structure(afs, params, finalists=(cand,))
    records = {k: v for k, v in (("plan_fit", search.get("plan_tuning")),
                                 ("output_fit", search.get("output_fit")),
                                 ("coordinate_fit", search.get("coordinate_fit"))) if v}
    # the saved plan itself, not one rebuilt from the times' logits (round-off)
    return SearchState.new({}).with_structure(st)._replace(
        records=records, plan=plan_from_result(result, schedule))


__all__ = ["Candidate", "SearchState", "Structure", "current_plan", "from_result",
           "state_from_json", "state_to_json", "to_result"]
