"""Search the best solver schedule and timesteps for a model under an exact NFE budget."""

from samplax.search.baselines import evaluate_baselines, optimize_times_2m
from samplax.search.dp import dp_timesteps
from samplax.search.objective import Teacher, evaluate_plan, make_teacher
from samplax.search.result import (
    ResultError,
    atomic_write_json,
    load_plan,
    load_result,
    resize_result,
)
from samplax.search.run import SearchConfig, search

__all__ = [
    "ResultError",
    "SearchConfig",
    "Teacher",
    "atomic_write_json",
    "dp_timesteps",
    "evaluate_baselines",
    "evaluate_plan",
    "load_plan",
    "load_result",
    "make_teacher",
    "optimize_times_2m",
    "resize_result",
    "search",
]
