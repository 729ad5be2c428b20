"""Search the best solver schedule and timesteps for a model under an exact NFE budget.

A search is a pipeline of phases (:mod:`samplax.search.phases`) over a typed state
(:mod:`samplax.search.state`), run by one driver (:mod:`samplax.search.driver`);
:func:`search` runs the default one (:data:`DEFAULT_PHASES`, described in
:mod:`samplax.search.run`).
"""

from samplax.search.baselines import evaluate_baselines, optimize_times_2m
from samplax.search.config import DEFAULT_PHASES, SearchConfig
from samplax.search.devices import noise_mesh, spread_denoiser
from samplax.search.dp import dp_timesteps
from samplax.search.objective import Teacher, evaluate_plan, make_teacher
from samplax.search.phases import (
    CoordinateFit,
    DPTimes,
    OutputFit,
    Phase,
    PlanFit,
    Population,
    Refine,
)
from samplax.search.result import (
    ResultError,
    atomic_write_json,
    load_plan,
    load_result,
    resize_result,
)
from samplax.search.run import continue_search, search
from samplax.search.space import SearchSpace
from samplax.search.times_only import optimize_times, search_times

__all__ = [
    "DEFAULT_PHASES",
    "CoordinateFit",
    "DPTimes",
    "OutputFit",
    "Phase",
    "PlanFit",
    "Population",
    "Refine",
    "ResultError",
    "SearchConfig",
    "SearchSpace",
    "Teacher",
    "atomic_write_json",
    "continue_search",
    "dp_timesteps",
    "evaluate_baselines",
    "evaluate_plan",
    "load_plan",
    "load_result",
    "make_teacher",
    "noise_mesh",
    "optimize_times",
    "optimize_times_2m",
    "resize_result",
    "search",
    "search_times",
    "spread_denoiser",
]
