"""The search's phases: each a small typed config and an update of the search state.

A phase (:class:`Phase`) has a ``name``, its own settings (the dataclass fields), a
:meth:`~Phase.skip` that says why it does not apply to a state and objective, and a
:meth:`~Phase.step` that does one unit of its work (a generation, or the whole fit)
and returns the new :class:`~samplax.search.state.SearchState`; the phase is done
when the state holds its record. The driver (:func:`samplax.search.driver.run_phases`)
runs a list of them with checkpoints, a time limit and progress; the default list is
:data:`samplax.search.config.DEFAULT_PHASES`. The fits themselves live in their own
modules (:mod:`samplax.search.dp`, :mod:`samplax.search.population`,
:mod:`samplax.search.free_plan`, :mod:`samplax.search.output_fit`,
:mod:`samplax.search.coordinate_fit`); a phase only wires one into the state.

To add a phase, write a frozen dataclass with a ``name`` field and a ``step``, and put
it in a config's ``phases``.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.reference import reference_solve
from samplax.schedules.steps import uniform_logsnr
from samplax.search.basis import BASES, MAX_DIM, resolved, start_in
from samplax.search.coordinate_fit import fit_coordinates, fit_cost, fitting_noises
from samplax.search.cost import Cost, adam, sampling
from samplax.search.dp import dp_timesteps
from samplax.search.free_plan import METHODS, tune_plan, zero_delta
from samplax.search.objective import check_loss
from samplax.search.output_fit import fit_output_in
from samplax.search.population import Params, stack
from samplax.search.space import mutate_steps, random_steps, theta_from_times
from samplax.search.state import (
    Candidate,
    SearchState,
    Structure,
    current_plan,
    structure_key,
)
from samplax.solvers.usf import Choices, Step


class Phase:
    """The protocol of a search phase (subclasses are frozen dataclasses)."""

    name: str

    def skip(self, state: SearchState, ctx) -> str | None:
        """Why this phase does not run on ``state`` for ``ctx``'s objective, or None."""
        return None

    def step(self, state: SearchState, ctx) -> SearchState:
        """One unit of work; the last one records the phase in ``state.records``."""
        raise NotImplementedError

    def done(self, state: SearchState) -> bool:
        return self.name in state.records

    def progress(self, state: SearchState) -> str:
        """Where the phase stands (for progress lines)."""
        return ""

    def units(self, ctx) -> int:
        """How many steps the phase takes (for progress)."""
        return 1

    def steps_left(self, state: SearchState, ctx) -> int:
        """How many steps the phase has left on ``state``."""
        return 0 if self.done(state) else 1

    def estimate(self, state: SearchState, ctx) -> Cost:
        """The network evaluations the phase has left on ``state`` (exact where the
        work is fixed, an upper estimate where it depends on the data)."""
        return Cost()

    def least(self, state: SearchState, ctx) -> Cost:
        """The cost of the smallest useful cut (:meth:`within`): the whole phase for
        one that cannot be cut."""
        return self.estimate(state, ctx)

    def within(self, budget: int, state: SearchState, ctx):
        """This phase with its work cut to at most ``budget`` sample-evaluations, or
        None if not even its smallest useful step fits. Phases whose work cannot be
        cut (the closed-form fits) fit or not as they are."""
        return self if self.estimate(state, ctx).total <= budget else None

    def needs(self, objective) -> dict:
        """Teacher data the phase needs beyond the calibration noises
        (``{"n_fit": n}``: extra fitting noises)."""
        return {}

    def run(self, state: SearchState, ctx) -> SearchState:
        """The whole phase, without checkpoints (the driver's loop for one phase)."""
        if self.skip(state, ctx) is None:
            while not self.done(state):
                state = self.step(state, ctx)
        return state


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _n_cal(ctx) -> int:
    return int(ctx.teacher.x_cal.shape[0])


def _teacher_per_noise(ctx) -> int:
    """The teacher's evaluations per noise (for the DP's own solve along its grid),
    a generous 1000 where the teacher did not count them."""
    ev = ctx.teacher.evaluations
    return -(-ev["calibration"] // _n_cal(ctx)) if ev else 1000


def _iters_within(budget: int, fixed: Cost, per_iter: Cost) -> int:
    """The most iterations whose cost ``fixed + iters * per_iter`` fits ``budget``."""
    return max((budget - fixed.total) // max(per_iter.total, 1), -1)


#: The one reason to skip that an earlier phase can remove (a budget plans for it).
NO_CANDIDATE = "no candidate yet"


def _no_candidate(state: SearchState) -> str | None:
    return None if state.best() is not None else NO_CANDIDATE


@dataclasses.dataclass(frozen=True)
class DPTimes(Phase):
    """Start every structure's times from the GITS dynamic-programming times on a grid
    of ``grid`` log-SNR intervals (:mod:`samplax.search.dp`, on the first ``noises``
    calibration noises); ``grid=0``: uniform log-SNR."""

    name: str = "dp_times"
    grid: int = 0
    noises: int = 32

    def __post_init__(self):
        _check(self.grid >= 0 and self.noises >= 1,
               f"{self.name}: grid must be >= 0 and noises >= 1")

    def skip(self, state, ctx):
        return None if self.grid else "grid=0: the times start uniform in log-SNR"

    def estimate(self, state, ctx):
        if self.done(state) or not self.grid:
            return Cost()
        m = min(self.noises, _n_cal(ctx))
        # the solve stops at every grid time: a quarter more steps than the teacher's
        return sampling(m, _teacher_per_noise(ctx) * 5 // 4 + self.grid * len(
            ctx.space.structures(ctx.nfe)))

    def step(self, state, ctx):
        x = ctx.teacher.x_cal[:self.noises]
        grid = uniform_logsnr(ctx.schedule, self.grid, t_start=ctx.t_start, t_end=ctx.t_end)
        # one teacher solve along the grid serves every structure
        states, calls = jax.jit(lambda x: reference_solve(
            ctx.denoiser, ctx.schedule, x, grid, return_evaluations=True))(x)
        cost = sampling(x.shape[0], int(calls))
        for afs in ctx.space.structures(ctx.nfe):
            n = ctx.nfe + int(afs)
            ts, _ = dp_timesteps(ctx.denoiser, ctx.schedule, n, x, t_start=ctx.t_start,
                                 t_end=ctx.t_end, grid=grid, states=states)
            cost = cost + sampling(x.shape[0], self.grid)  # one DDIM step per grid row
            init = Params.zeros(n, afs)._replace(
                theta=jnp.asarray(theta_from_times(ctx.schedule, ts)))
            state = state.with_structure(Structure(afs, init))
        return state.with_record(self.name, {"grid": self.grid}).spent(self.name, cost)


def _seed_steps(n: int, orders) -> list[tuple[Step, ...]]:
    """Uniform choice sets: every (prediction, order, corrector) on all steps."""
    return [tuple([Step(p, o, c)] * n) for p in ("data", "noise") for o in orders
            for c in (False, True)]


@dataclasses.dataclass(frozen=True)
class Population(Phase):
    """Memetic search over per-step choices, per structure: every generation
    evaluates ``size`` candidates in one ``vmap``, refines the ``elites`` best by
    ``refine_iters`` Adam steps at ``lr`` through the sampler (keeping the archive's
    ``archive`` best), and breeds the next generation from them: a share ``mutation``
    of mutated elites inheriting their parameters, the rest random. The first
    generation holds every uniform choice set."""

    name: str = "population"
    size: int = 48
    generations: int = 6
    elites: int = 4
    refine_iters: int = 40
    lr: float = 0.05
    archive: int = 8
    mutation: float = 0.85

    def __post_init__(self):
        _check(self.size >= 1 and self.generations >= 0 and 1 <= self.elites
               and self.refine_iters >= 0 and self.lr > 0 and self.archive >= 1
               and 0 <= self.mutation <= 1,
               f"{self.name}: need size >= 1, generations >= 0, elites >= 1, refine_iters "
               f">= 0, lr > 0, archive >= 1 and mutation in [0, 1]; got {self}")

    def units(self, ctx):
        return self.generations * len(ctx.space.structures(ctx.nfe))

    def skip(self, state, ctx):
        return None if self.generations else "generations=0"

    def step(self, state, ctx):
        keys = [structure_key(afs) for afs in ctx.space.structures(ctx.nfe)]
        for afs, key in zip(ctx.space.structures(ctx.nfe), keys):
            n = ctx.nfe + int(afs)
            st = state.structures.get(key) or Structure(afs, Params.zeros(n, afs))
            if st.generation < self.generations:
                state = state.with_structure(self._generation(st, ctx))
                n_elites = min(self.elites, self.size)
                state = state.counted(population_evaluations=self.size,
                                      refinement_steps=self.refine_iters * n_elites)
                state = state.spent(self.name, self.generation_cost(ctx))
                break
        if all(k in state.structures and state.structures[k].generation >= self.generations
               for k in keys):
            state = state.with_record(self.name, {
                "generations": self.generations,
                "structures": {k: s.best.loss for k, s in state.structures.items()}})
        return state

    def estimate(self, state, ctx):
        return Cost(*(self.steps_left(state, ctx) * c for c in self.generation_cost(ctx)))

    def least(self, state, ctx):
        if self.done(state):
            return Cost()
        n = len(ctx.space.structures(ctx.nfe))
        return Cost(*(min(n, self.steps_left(state, ctx)) * c
                      for c in self.generation_cost(ctx)))

    def within(self, budget, state, ctx):
        per_gen = self.generation_cost(ctx).total
        left = self.steps_left(state, ctx)
        fit = min(left, budget // max(per_gen, 1))
        if fit == left:
            return self
        done = self.generations * len(ctx.space.structures(ctx.nfe)) - left
        total = done + fit  # generations over all structures; each gets a share
        per_structure = total // len(ctx.space.structures(ctx.nfe))
        if per_structure < 1:
            return None
        return dataclasses.replace(self, generations=per_structure)

    def generation_cost(self, ctx) -> Cost:
        """One generation: the population's losses, then the elites' refinement."""
        n = ctx.teacher.x_cal.shape[0]
        return (sampling(n, ctx.nfe, self.size)
                + adam(n, ctx.nfe, self.refine_iters, min(self.elites, self.size)))

    def steps_left(self, state, ctx):
        return sum(self.generations - (state.structures[structure_key(a)].generation
                                       if structure_key(a) in state.structures else 0)
                   for a in ctx.space.structures(ctx.nfe))

    def progress(self, state) -> str:
        return "; ".join(f"{'with' if s.afs else 'without'} analytical first step: "
                         f"generation {s.generation}/{self.generations}"
                         for s in state.structures.values())

    def _generation(self, st: Structure, ctx) -> Structure:
        n, orders = ctx.nfe + int(st.afs), ctx.space.orders
        rng = np.random.default_rng([ctx.seed, int(st.afs)])
        if st.population:
            rng.bit_generator.state = st.rng
            pop, params = list(st.population), list(st.params)
        else:
            pop = _seed_steps(n, orders)
            while len(pop) < self.size:
                pop.append(random_steps(rng, n, orders=orders))
            pop = pop[: self.size]
            params = [st.init] * len(pop)
        ev = ctx.evaluator(st.afs)
        stacked, choices = stack(params), stack([Choices.from_steps(s) for s in pop])
        losses = np.asarray(ev.batch_loss(stacked, choices))
        losses = np.where(np.isfinite(losses), losses, np.inf)
        order = np.argsort(losses, kind="stable")[: self.elites]
        sub = lambda t: jax.tree.map(lambda a: a[order], t)  # noqa: E731
        ref_p, ref_l = ev.refine(sub(stacked), sub(choices), iters=self.refine_iters,
                                 lr=self.lr, free=ctx.space.free)
        ref_l = np.asarray(ref_l)
        elites = [Candidate(pop[i], jax.tree.map(lambda a, j=j: a[j], ref_p), float(ref_l[j]))
                  for j, i in enumerate(order)]
        archive = sorted(st.archive + tuple(elites), key=lambda c: c.loss)[: self.archive]
        # the next generation: the elites, their mutations (inheriting their
        # parameters), and random choices
        new_pop, new_params = [e.steps for e in elites], [e.params for e in elites]
        while len(new_pop) < self.size:
            parent = elites[int(rng.integers(len(elites)))]
            if rng.random() < self.mutation:
                new_pop.append(mutate_steps(rng, parent.steps, orders=orders))
                new_params.append(parent.params)
            else:
                new_pop.append(random_steps(rng, n, orders=orders))
                new_params.append(st.init)
        return st._replace(generation=st.generation + 1, population=tuple(new_pop),
                           params=tuple(new_params), rng=rng.bit_generator.state,
                           archive=tuple(archive))


@dataclasses.dataclass(frozen=True)
class Refine(Phase):
    """Adam through the sampler on each structure's finalists: the ``finalists`` best
    distinct choices of the archive, or the finalists a previous refinement left;
    ``iters`` steps at ``lr``, decaying along a half cosine to ``lr_end`` if given."""

    name: str = "refine"
    iters: int = 300
    lr: float = 0.025
    lr_end: float | None = None
    finalists: int = 2

    def __post_init__(self):
        _check(self.iters >= 0 and self.lr > 0 and self.finalists >= 1
               and (self.lr_end is None or self.lr_end > 0),
               f"{self.name}: need iters >= 0, lr > 0, lr_end > 0 or None and finalists "
               f">= 1; got {self}")

    def skip(self, state, ctx):
        if not self.iters:
            return "iters=0"
        return _no_candidate(state)

    def _count(self, state, ctx) -> int:
        """Finalists to refine, over all structures (estimated before the archive
        exists: ``finalists`` per structure)."""
        if state.structures:
            return sum(len(self._start(st)) for st in state.structures.values())
        return self.finalists * len(ctx.space.structures(ctx.nfe))

    def estimate(self, state, ctx):
        if self.done(state):
            return Cost()
        return adam(_n_cal(ctx), ctx.nfe, self.iters, self._count(state, ctx))

    def least(self, state, ctx):
        return Cost() if self.done(state) else adam(_n_cal(ctx), ctx.nfe, min(self.iters, 1),
                                                     self._count(state, ctx))

    def within(self, budget, state, ctx):
        if self.estimate(state, ctx).total <= budget:
            return self
        per = adam(_n_cal(ctx), ctx.nfe, 1, self._count(state, ctx))
        start = sampling(_n_cal(ctx), ctx.nfe, self._count(state, ctx))
        iters = _iters_within(budget, start, Cost(*(a - b for a, b in zip(per, start))))
        return dataclasses.replace(self, iters=iters) if iters >= 1 else None

    def _start(self, st: Structure) -> list[Candidate]:
        if st.finalists:
            return list(st.finalists)
        seen, out = set(), []
        for c in st.archive:
            k = json.dumps([list(s) for s in c.steps])
            if k not in seen:
                seen.add(k)
                out.append(c)
            if len(out) == self.finalists:
                break
        return out

    def step(self, state, ctx):
        for st in list(state.structures.values()):
            start = self._start(st)
            if not start:
                continue
            params = stack([c.params for c in start])
            choices = stack([Choices.from_steps(c.steps) for c in start])
            p, loss = ctx.evaluator(st.afs).refine(params, choices, iters=self.iters,
                                                   lr=self.lr, lr_end=self.lr_end,
                                                   free=ctx.space.free)
            loss = np.asarray(loss)
            final = tuple(Candidate(c.steps, jax.tree.map(lambda a, j=j: a[j], p),
                                    float(loss[j])) for j, c in enumerate(start))
            state = state.with_structure(st._replace(finalists=final)).counted(
                refinement_steps=self.iters * len(start)).spent(
                self.name, adam(ctx.teacher.x_cal.shape[0], ctx.nfe, self.iters, len(start)))
        return state.with_record(self.name, {
            "iters": self.iters,
            "structures": {k: s.best.loss for k, s in state.structures.items()
                           if s.best is not None}})


@dataclasses.dataclass(frozen=True)
class PlanFit(Phase):
    """Every coefficient of the best plan and its network times, free
    (:mod:`samplax.search.free_plan`, Bespoke-style): at most ``iters``
    Levenberg-Marquardt steps on ``loss``, or with ``method="adam"`` (always for a
    metric other than the RMSE) Adam steps at ``lr`` decaying to ``lr / 100``."""

    name: str = "plan_fit"
    iters: int = 40
    method: str = "lm"
    loss: str = "log_rmse"
    lr: float = 0.003
    max_calls: int | None = None

    def __post_init__(self):
        _check(self.max_calls is None or self.max_calls >= 1,
               f"{self.name}: max_calls must be >= 1 or None")
        _check(self.method in METHODS,
               f"{self.name}: unknown method {self.method!r}; choose one of {list(METHODS)}")
        check_loss(self.loss)
        _check(self.iters >= 0 and self.lr > 0, f"{self.name}: need iters >= 0 and lr > 0")

    def skip(self, state, ctx):
        if not self.iters:
            return "iters=0"
        return ctx.objective.final_sample_only() or _no_candidate(state)

    def _directions(self, state, ctx) -> int:
        """Forward-mode directions of the Jacobian: the plan's free entries, rounded
        up to the Levenberg-Marquardt chunk of 64 (before a plan exists, those of the
        largest plan the space allows: every step of the highest order, corrected,
        on the structure with the most steps)."""
        if state.best() is not None:
            plan = current_plan(state, ctx)
        else:
            afs = max(ctx.space.structures(ctx.nfe))
            n = ctx.nfe + int(afs)
            steps = (Step("data", max(ctx.space.orders), True),) * n
            plan = ctx.candidate_plan(Candidate(steps, Params.zeros(n, afs), 0.0), afs)
        p = sum(np.size(a) for a in jax.tree.leaves(zero_delta(plan)))
        return -(-p // 64) * 64

    def estimate(self, state, ctx):
        if self.done(state) or not self.iters:
            return Cost()
        per = _n_cal(ctx) * ctx.nfe
        if self.method == "adam" or ctx.objective.metric_name != "rmse":
            return adam(_n_cal(ctx), ctx.nfe, self.iters)
        # per accepted step: one linearization and (bounded by max_calls under a
        # budget) two trial evaluations
        return Cost(forward=per * (1 + 3 * self.iters),
                    tangent=per * self._directions(state, ctx) * self.iters)

    def least(self, state, ctx):
        return dataclasses.replace(self, iters=min(self.iters, 1)).estimate(state, ctx)

    def within(self, budget, state, ctx):
        # under a budget the trials are capped, so that the estimate is a bound
        one = dataclasses.replace(self, iters=1).estimate(state, ctx)
        start = sampling(_n_cal(ctx), ctx.nfe)
        iters = min(self.iters, _iters_within(budget, start,
                                              Cost(*(a - b for a, b in zip(one, start)))))
        return (dataclasses.replace(self, iters=iters, max_calls=1 + 2 * iters)
                if iters >= 1 else None)

    def step(self, state, ctx):
        custom = ctx.objective.metric_name != "rmse"
        method = "adam" if custom else self.method
        tuned = tune_plan(
            ctx.denoiser, ctx.schedule, current_plan(state, ctx), ctx.teacher.x_cal,
            ctx.teacher.ref_cal, iters=self.iters, method=method, loss=self.loss, lr=self.lr,
            lr_end=self.lr / 100, metric=ctx.objective.metric if custom else None,
            max_calls=self.max_calls)
        record = {"iters": self.iters, "method": method,
                  "loss_name": ctx.objective.metric_name if custom else self.loss,
                  "loss_before": tuned.loss_before, "loss": tuned.loss}
        return state.with_record(self.name, record, tuned.plan).counted(
            refinement_steps=self.iters).spent(self.name, tuned.cost)


@dataclasses.dataclass(frozen=True)
class OutputFit(Phase):
    """The output combination per coordinate with an offset, in closed form
    (:mod:`samplax.search.output_fit`), kept only if a cross-check within the
    calibration noises prefers it; in the coordinates ``basis``
    (:data:`samplax.search.basis.BASES`; ``"auto"``: both, the better kept) for
    samples of at most ``max_dim`` entries."""

    name: str = "output_fit"
    enabled: bool = True
    basis: str = "auto"
    max_dim: int = MAX_DIM
    loss: str = "log_rmse"

    def __post_init__(self):
        _check(self.basis in BASES,
               f"{self.name}: unknown basis {self.basis!r}; choose one of {list(BASES)}")
        check_loss(self.loss)

    def skip(self, state, ctx):
        if not self.enabled:
            return "enabled=false"
        return ctx.objective.per_sample() or _no_candidate(state)

    def estimate(self, state, ctx):
        if self.done(state) or not self.enabled:
            return Cost()
        return sampling(_n_cal(ctx), ctx.nfe, 2 if self.basis == "auto" else 1)

    def step(self, state, ctx):
        fitted, record = fit_output_in(ctx.denoiser, current_plan(state, ctx), ctx.teacher,
                                       basis=self.basis, loss=self.loss, max_dim=self.max_dim)
        cost = sampling(ctx.teacher.x_cal.shape[0], ctx.nfe, record["passes"])
        return state.with_record(self.name, record, fitted).spent(self.name, cost)


@dataclasses.dataclass(frozen=True)
class CoordinateFit(Phase):
    """Every slot's coefficients per coordinate (:mod:`samplax.search.coordinate_fit`,
    DPM-Solver-v3's form): ``iters`` Adam steps peaking at ``lr`` on the calibration
    and ``n_fit`` extra fitting noises (a quarter kept out to choose the iterate), in
    the coordinates ``basis`` (``"auto"``: the output fit's choice)."""

    name: str = "coordinate_fit"
    iters: int = 400
    lr: float = 3e-4
    loss: str = "log_rmse"
    basis: str = "auto"
    max_dim: int = MAX_DIM
    n_fit: int = 2048

    def __post_init__(self):
        _check(self.basis in BASES,
               f"{self.name}: unknown basis {self.basis!r}; choose one of {list(BASES)}")
        check_loss(self.loss)
        _check(self.iters >= 0 and self.lr > 0 and self.n_fit >= 0,
               f"{self.name}: need iters >= 0, lr > 0 and n_fit >= 0")

    def needs(self, objective):
        if not self.iters or not self.n_fit or objective.per_sample():
            return {}
        return {"n_fit": self.n_fit}

    def _noises(self, ctx) -> int:
        fit = ctx.teacher.x_fit
        return _n_cal(ctx) + (0 if fit is None else int(fit.shape[0]))

    def estimate(self, state, ctx):
        if self.done(state) or not self.iters:
            return Cost()
        return fit_cost(self._noises(ctx), ctx.nfe, iters=self.iters)

    def least(self, state, ctx):
        return dataclasses.replace(self, iters=min(self.iters, 16)).estimate(state, ctx)

    def within(self, budget, state, ctx):
        if self.estimate(state, ctx).total <= budget:
            return self
        lo, hi = 0, self.iters  # the cost grows with the iterations
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fit_cost(self._noises(ctx), ctx.nfe, iters=mid).total <= budget:
                lo = mid
            else:
                hi = mid - 1
        return dataclasses.replace(self, iters=lo) if lo >= 16 else None

    def skip(self, state, ctx):
        if not self.iters:
            return "iters=0"
        if ctx.teacher.x_fit is None:
            return "the teacher has no fitting noises (make_teacher(n_fit=...))"
        return ctx.objective.per_sample() or _no_candidate(state)

    def step(self, state, ctx):
        x, ref = fitting_noises(ctx.teacher)
        start = start_in(current_plan(state, ctx), ctx.teacher,
                         resolved(self.basis, state.records.get("output_fit")), self.max_dim)
        fitted, before, after, applied = fit_coordinates(ctx.denoiser, start, x, ref,
                                                         iters=self.iters, lr=self.lr,
                                                         loss=self.loss)
        record = {"applied": applied, "iters": self.iters, "n_noises": int(x.shape[0]),
                  "loss_before": before, "loss": after}
        return state.with_record(self.name, record, fitted).counted(
            refinement_steps=self.iters).spent(self.name, fit_cost(x.shape[0], ctx.nfe,
                                                                    iters=self.iters))


__all__ = ["CoordinateFit", "DPTimes", "OutputFit", "Phase", "PlanFit", "Population",
           "Refine"]
