"""Named search sizes: an evaluation budget, the teacher's size and tolerance, and
the phase mix that spends the budget best (``samplax search --budget NAME``).

A :class:`Budget` is data: the calibration noises, the teacher's tolerance, the
settings it changes in :class:`~samplax.search.config.SearchConfig`, and
``max_evals``, the bound the driver enforces (:func:`samplax.search.search`). The
mixes were chosen by measuring held-out quality against evaluations on gmm64 and
digits (``benchmarks/budgets.py``, recorded in ``benchmarks/RESULTS.md``): the
Levenberg-Marquardt fit of the whole plan buys the most per evaluation once a
structure is found, so the small budgets spend on it rather than on generations;
the per-coordinate fit needs thousands of extra teacher noises and only
``thorough`` pays for it.
"""

from __future__ import annotations

from typing import NamedTuple

from samplax.search.config import SearchConfig


class Budget(NamedTuple):
    """A named search size.

    ``max_evals``: the bound on sample-evaluations, teacher included (None: no
    bound); ``n_cal``: calibration noises; ``teacher_rtol``: the teacher's
    tolerance (None: the default of the model's dtype,
    :func:`samplax.models.reference.reference_tolerance`); ``settings``:
    ``(path, value)`` pairs for :meth:`SearchConfig.set_path`.
    """

    name: str
    max_evals: int | None
    n_cal: int
    teacher_rtol: float | None
    settings: tuple
    summary: str

    def config(self, base: SearchConfig | None = None) -> SearchConfig:
        """``base`` (default ``SearchConfig()``) with this budget's settings."""
        out = base or SearchConfig()
        for path, value in self.settings:
            out = out.set_path(path, value)
        return out

    def describe(self) -> str:
        bound = "no bound" if self.max_evals is None else f"at most {self.max_evals:,}"
        return f"{self.name}: {bound} evaluations, {self.n_cal} calibration noises; " \
               f"{self.summary}"


def _mix(size, generations, refine_iters, refine, polish, lm) -> tuple:
    """The settings of a small budget: population, refinements, LM steps, and no
    extra teacher noises (the per-coordinate fit skipped)."""
    return (("population.size", size), ("population.generations", generations),
            ("population.elites", 2), ("population.refine_iters", refine_iters),
            ("refine.iters", refine), ("polish.iters", polish), ("plan_fit.iters", lm),
            ("coordinate_fit.n_fit", 0))


#: The named budgets, smallest first. ``thorough`` is the full search of samplax
#: 0.2 (about 12M evaluations at NFE 5 with its float64 teacher).
BUDGETS: dict[str, Budget] = {
    "fast": Budget("fast", 100_000, 32, 1e-5, _mix(16, 1, 10, 15, 10, 3),
                   "one generation, short refinements, a few Levenberg-Marquardt steps"),
    "default": Budget("default", 1_000_000, 32, 1e-5, _mix(24, 2, 15, 60, 40, 30),
                      "two generations, most of the budget on the Levenberg-Marquardt fit"),
    "thorough": Budget("thorough", None, 256, None, (),
                       "every phase at its default size, the per-coordinate fit on 2048 "
                       "extra teacher noises"),
}


def get_budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown budget {name!r}; choose one of {list(BUDGETS)}") from None


__all__ = ["BUDGETS", "Budget", "get_budget"]
