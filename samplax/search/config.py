"""The search's configuration: the list of phases (each with its own settings), the
search space, the seed and the objective's trajectory weight.

:data:`DEFAULT_PHASES` is the one place that knows the default order of the phases.
A setting is addressed by the phase's name and the field's
(``config.set_path("coordinate_fit.iters", 0)``, ``--set coordinate_fit.iters=0`` on
the command line), or by groups (``config.set(population={"size": 12}, seed=1)``).
The flat names of samplax 0.1 (``plan_iters``, ``final_iters``, ...) still work for
one release, with a deprecation message (:data:`FLAT_NAMES`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

from samplax.search.phases import (
    CoordinateFit,
    DPTimes,
    OutputFit,
    Phase,
    PlanFit,
    Population,
    Refine,
)
from samplax.search.space import SearchSpace

#: The default pipeline, in order: optional DP times, the population search, a long
#: refinement of the finalists and a polish at a decaying rate, the free-plan fit,
#: the output fit and the per-coordinate fit.
DEFAULT_PHASES: tuple[Phase, ...] = (
    DPTimes(),
    Population(),
    Refine(),
    Refine(name="polish", iters=300, lr=0.05 / 5, lr_end=0.05 / 100),
    PlanFit(),
    OutputFit(),
    CoordinateFit(),
)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Phases, space, seed and trajectory weight; the defaults need no tuning.

    ``trajectory_weight > 0``: the structured phases also minimize this weight times
    the mean per-sample RMSE of the intermediate states against the teacher's
    trajectories, kept at ``trajectory_grid`` half log-SNRs
    (``make_teacher(n_grid=...)``); the phases that fit the final sample only are
    then skipped.
    """

    phases: tuple = DEFAULT_PHASES
    space: SearchSpace = SearchSpace()
    seed: int = 0
    trajectory_weight: float = 0.0
    trajectory_grid: int = 65

    def __post_init__(self):
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        for p in self.phases:
            if not isinstance(p, Phase):
                raise TypeError(f"phases must be Phase objects, got {type(p).__name__}")
        if not self.trajectory_weight >= 0:
            raise ValueError(f"trajectory_weight must be >= 0, got {self.trajectory_weight}")
        if self.trajectory_grid < 2:
            raise ValueError(f"trajectory_grid must be >= 2, got {self.trajectory_grid}")

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r} in this config; phases: "
                       f"{[p.name for p in self.phases]}")

    def set(self, **groups) -> SearchConfig:
        """A copy with settings changed: ``phase_name={"field": value}``,
        ``space={"afs": (True,)}``, or a top-level field (``seed=1``)."""
        out = self
        for group, value in groups.items():
            if isinstance(value, dict):
                for field, v in value.items():
                    out = out.set_path(f"{group}.{field}", v)
            else:
                out = out.set_path(group, value)
        return out

    def set_path(self, path: str, value) -> SearchConfig:
        """A copy with the setting ``path`` (``"phase.field"``, ``"space.field"``, a
        top-level field, or a deprecated flat name of :data:`FLAT_NAMES`) set to
        ``value``, type-checked against the current one."""
        group, sep, field = path.partition(".")
        if not sep and group not in {f.name for f in dataclasses.fields(self)}:
            flat = flat_setting(group, value)
            if not flat:
                raise KeyError(f"{path!r}: no such setting; use PHASE.FIELD with PHASE one "
                               f"of {[p.name for p in self.phases]}, space.FIELD, or one "
                               f"of {[f.name for f in dataclasses.fields(self)]}")
            out = self
            for p, v in flat.items():
                out = out.set_path(p, v)
            return out
        if not sep:
            _check_field(self, group, path)
            return dataclasses.replace(self, **{group: _typed(getattr(self, group), value,
                                                              path)})
        if group == "space":
            _check_field(self.space, field, path)
            space = dataclasses.replace(self.space, **{field: _typed(
                getattr(self.space, field), value, path)})
            return dataclasses.replace(self, space=space)
        try:
            phase = self.phase(group)
        except KeyError as e:
            raise KeyError(f"{path!r}: {e.args[0]}") from None
        _check_field(phase, field, path)
        if field == "name":
            raise KeyError(f"{path!r}: a phase's name cannot be set")
        new = dataclasses.replace(phase, **{field: _typed(getattr(phase, field), value, path)})
        return dataclasses.replace(self, phases=tuple(new if p is phase else p
                                                      for p in self.phases))

    def to_json(self) -> dict:
        return {"phases": [{"type": type(p).__name__, **dataclasses.asdict(p)}
                           for p in self.phases],
                "space": dataclasses.asdict(self.space), "seed": self.seed,
                "trajectory_weight": self.trajectory_weight,
                "trajectory_grid": self.trajectory_grid}

    def key(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def teacher_needs(self, objective) -> dict:
        """What the teacher must hold for this pipeline and objective
        (:class:`samplax.search.context.Objective`): ``n_fit`` extra fitting noises
        and ``n_grid`` trajectory points (0: none)."""
        n_fit = max([p.needs(objective).get("n_fit", 0) for p in self.phases], default=0)
        return {"n_fit": n_fit,
                "n_grid": self.trajectory_grid if objective.trajectory_weight else 0}


def _check_field(obj, field: str, path: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    if field not in names:
        raise KeyError(f"{path!r}: {type(obj).__name__} has no setting {field!r}; "
                       f"it has {names}")


def _typed(current, value, path: str):
    """``value`` as the type of the setting's current value, or a TypeError."""
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float) or current is None:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            current is None and value is None)
        value = float(value) if ok and value is not None else value
    elif isinstance(current, tuple):
        ok = isinstance(value, list | tuple)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        want = "a number or null" if current is None else f"a {type(current).__name__}"
        raise TypeError(f"{path} takes {want}, got {value!r}")
    return value


def _lr(v):
    return {"population.lr": v, "refine.lr": v / 2, "polish.lr": v / 5,
            "polish.lr_end": v / 100}


def _finalists(v):
    return {"refine.finalists": v, "polish.finalists": v, "population.archive": 4 * v}


#: The flat ``SearchConfig`` fields of samplax 0.1, as the settings they now are.
FLAT_NAMES = {
    "population": "population.size", "generations": "population.generations",
    "elites": "population.elites", "refine_iters": "population.refine_iters",
    "lr": _lr, "finalists": _finalists, "final_iters": "refine.iters",
    "polish_iters": "polish.iters", "plan_iters": "plan_fit.iters",
    "plan_method": "plan_fit.method", "plan_lr": "plan_fit.lr",
    "plan_loss": ("plan_fit.loss", "output_fit.loss", "coordinate_fit.loss"),
    "output_fit": "output_fit.enabled", "coordinate_iters": "coordinate_fit.iters",
    "coordinate_lr": "coordinate_fit.lr",
    "basis": ("output_fit.basis", "coordinate_fit.basis"),
    "basis_max_dim": ("output_fit.max_dim", "coordinate_fit.max_dim"),
    "afs": "space.afs", "orders": "space.orders",
    "free_coefficients": "space.free_coefficients", "model_times": "space.model_times",
    "dp_grid": "dp_times.grid",
}


def flat_setting(name: str, value) -> dict:
    """The settings an old flat name stands for (``{"path": value}``), with a
    deprecation warning; ``{}`` if ``name`` is not one."""
    target = FLAT_NAMES.get(name)
    if target is None:
        return {}
    if callable(target):
        out = target(value)
    else:
        out = {path: value for path in ((target,) if isinstance(target, str) else target)}
    warnings.warn(f"the setting {name!r} is deprecated and goes away in the next release; "
                  f"use {', '.join(out)}", DeprecationWarning, stacklevel=4)
    return out


__all__ = ["DEFAULT_PHASES", "FLAT_NAMES", "SearchConfig", "flat_setting"]
