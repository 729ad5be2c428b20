"""The search space: timesteps and per-step solver choices of an exact NFE budget.

A candidate (:class:`samplax.search.state.Candidate`) is everything that turns into a
plan with :func:`samplax.solvers.usf.usf`: the per-step
:class:`~samplax.solvers.usf.Step` choices (prediction type, order, corrector), the
analytical first step, the timesteps through an unconstrained parameter ``theta``
(LD3-style: the log-SNR increments are ``softmax(theta)`` of the fixed range, so any
``theta`` gives strictly decreasing times with fixed ends), free coefficients and
offsets of the network's times in ``lam``
(:class:`samplax.search.population.Params`). :class:`SearchSpace` says which of
them the search may choose.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.usf import Step, usf


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What the structured search chooses: with and/or without the analytical first
    step (``afs``), the orders it may pick per step, and whether the free
    coefficients and the network-time offsets are searched too."""

    afs: tuple = (False, True)
    orders: tuple = (1, 2, 3, 4)
    free_coefficients: bool = True
    model_times: bool = True

    def __post_init__(self):
        if not self.afs or any(not isinstance(a, bool) for a in self.afs):
            raise ValueError(f"space.afs must be a non-empty tuple of bools, got {self.afs!r}")
        if not self.orders or any(not isinstance(o, int) or not 1 <= o <= 4
                                  for o in self.orders):
            raise ValueError(f"space.orders must be orders in 1..4, got {self.orders!r}")

    @property
    def free(self) -> tuple[str, ...]:
        """The :class:`~samplax.search.population.Params` fields refinement moves."""
        return (("theta",) + (("coefficients",) if self.free_coefficients else ())
                + (("shift",) if self.model_times else ()))

    def structures(self, nfe: int) -> list[bool]:
        """The AFS settings a budget allows (AFS needs at least two steps)."""
        return [a for a in self.afs if nfe + int(a) >= 2 or not a]


def candidate_times(schedule, params, afs: bool, t_start, t_end):
    """``(times [n + 1], network times [nfe])`` of a candidate's parameters."""
    ts = times_from_theta(schedule, params.theta, t_start, t_end)
    eval_ts = ts[1:-1] if afs else ts[:-1]
    return ts, schedule.t_of_lam(schedule.lam(eval_ts) + params.shift)


def candidate_plan(schedule, steps, params, afs: bool, t_start, t_end, space: SearchSpace):
    """The plan of a candidate (its free coefficients and network times as far as
    ``space`` searches them)."""
    ts, model_times = candidate_times(schedule, params, afs, t_start, t_end)
    return usf(schedule, ts, steps, afs=afs,
               coefficients=params.coefficients if space.free_coefficients else None,
               model_times=model_times if space.model_times else None)


def lam_range(schedule, t_start, t_end):
    lam0, lam1 = schedule.lam(jnp.asarray(t_start)), schedule.lam(jnp.asarray(t_end))
    if not isinstance(lam1, jax.core.Tracer) and not np.isfinite(float(lam1)):
        raise ValueError(
            "the search parameterizes times in log-SNR and needs sigma(t_end) > 0; "
            "end the search at a small positive time (a final denoise can follow)"
        )
    return lam0, lam1


def times_from_theta(schedule, theta, t_start, t_end):
    """Strictly decreasing times ``[n + 1]`` with fixed ends from logits ``theta [n]``."""
    lam0, lam1 = lam_range(schedule, t_start, t_end)
    frac = jnp.concatenate([jnp.zeros(1, theta.dtype), jnp.cumsum(jax.nn.softmax(theta))])
    ts = schedule.t_of_lam(lam0 + (lam1 - lam0) * frac)
    return ts.at[0].set(t_start).at[-1].set(t_end)


def theta_from_times(schedule, ts) -> np.ndarray:
    """The logits that reproduce given times (inverse of :func:`times_from_theta`)."""
    lam = np.asarray(schedule.lam(jnp.asarray(ts)), float)
    inc = np.diff(lam)
    if np.any(inc <= 0):
        raise ValueError("times must be strictly decreasing")
    return np.log(inc / inc.sum())


def random_steps(rng: np.random.Generator, n: int, *, orders=(1, 2, 3, 4),
                 predictions=("data", "noise")) -> tuple[Step, ...]:
    return tuple(
        Step(str(rng.choice(predictions)), int(rng.choice(orders)), bool(rng.random() < 0.5))
        for _ in range(n)
    )


def mutate_steps(rng: np.random.Generator, steps: tuple[Step, ...], rate: float = 0.3,
                 orders=(1, 2, 3, 4), predictions=("data", "noise")) -> tuple[Step, ...]:
    """Change each step's fields independently with probability ``rate``."""
    out = []
    for st in steps:
        pred, order, corr = st
        if rng.random() < rate:
            pred = str(rng.choice(predictions))
        if rng.random() < rate:
            order = int(rng.choice(orders))
        if rng.random() < rate:
            corr = not corr
        out.append(Step(pred, order, corr))
    return tuple(out)
