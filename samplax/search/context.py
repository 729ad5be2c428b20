"""What every phase of a search reads and never changes: the model, the budget, the
teacher, the search space and the objective."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from samplax.search.objective import Teacher, resolve_metric
from samplax.search.population import Evaluator, evaluator_for
from samplax.search.result import schedule_description
from samplax.search.space import SearchSpace, candidate_plan


class Objective(NamedTuple):
    """What the search minimizes on the calibration noises: a metric of the samples
    against the teacher's (``"rmse"``, the mean per-sample RMSE, by default), plus
    ``trajectory_weight`` times the error of the intermediate states."""

    metric_name: str
    metric: Callable
    trajectory_weight: float = 0.0

    @classmethod
    def of(cls, metric=None, trajectory_weight: float = 0.0) -> Objective:
        return cls(*resolve_metric(metric), float(trajectory_weight))

    def final_sample_only(self) -> str | None:
        """Why a phase that fits the final sample only does not fit this objective."""
        if self.trajectory_weight:
            return ("it fits the final sample only and would undo the trajectory objective "
                    "(trajectory_weight > 0)")
        return None

    def per_sample(self) -> str | None:
        """Why a phase that fits per-sample errors does not fit this objective."""
        if self.metric_name != "rmse":
            return f"it fits per-sample errors, and the metric is {self.metric_name!r}"
        return self.final_sample_only()


class Context(NamedTuple):
    denoiser: Callable
    schedule: object
    nfe: int
    teacher: Teacher
    t_start: float
    t_end: float
    space: SearchSpace
    objective: Objective
    seed: int = 0

    @property
    def schedule_description(self) -> dict:
        return schedule_description(self.schedule)

    def candidate_plan(self, cand, afs: bool):
        return candidate_plan(self.schedule, cand.steps, cand.params, afs, self.t_start,
                              self.t_end, self.space)

    def evaluator(self, afs: bool) -> Evaluator:
        """The compiled loss and refinement of the structure ``afs`` (NFE + AFS steps)."""
        return evaluator_for(self.denoiser, self.schedule, self.nfe + int(afs), afs,
                             self.t_start, self.t_end, self.teacher, self.objective.metric,
                             self.objective.trajectory_weight)


__all__ = ["Context", "Objective"]
