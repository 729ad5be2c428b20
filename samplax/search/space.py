"""The search space: timesteps and per-step solver choices of an exact NFE budget.

A :class:`Candidate` is everything that turns into a plan with
:func:`samplax.solvers.usf.usf`: the per-step :class:`~samplax.solvers.usf.Step`
choices (prediction type, order, corrector), the analytical first step, the
timesteps through an unconstrained parameter ``theta`` (LD3-style: the
log-SNR increments are ``softmax(theta)`` of the fixed range, so any ``theta``
gives strictly decreasing times with fixed ends), optional free coefficients
and optional offsets of the network's times (in ``lam``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.usf import MAX_ORDER, Step, usf


class Candidate(NamedTuple):
    """One point of the search space (a plan of ``nfe = len(steps) - afs``)."""

    steps: tuple[Step, ...]
    afs: bool
    theta: np.ndarray  # [n] logits of the log-SNR increments
    coefficients: np.ndarray | None = None  # [n, MAX_ORDER - 1]
    model_shift: np.ndarray | None = None  # [nfe] lam offsets of the network's times

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        return len(self.steps) - int(self.afs)

    def choices_key(self) -> tuple:
        return (self.afs,) + tuple(tuple(s) for s in self.steps)


def n_steps_for(nfe: int, afs: bool) -> int:
    """Steps a plan of exactly ``nfe`` evaluations takes (AFS buys one step)."""
    return nfe + int(afs)


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


def candidate_plan(schedule, cand: Candidate, t_start, t_end, *, theta=None, coefficients=None,
                   model_shift=None):
    """The plan of a candidate; array arguments override the candidate's (for gradients)."""
    theta = jnp.asarray(cand.theta if theta is None else theta)
    ts = times_from_theta(schedule, theta, t_start, t_end)
    coefs = cand.coefficients if coefficients is None else coefficients
    shift = cand.model_shift if model_shift is None else model_shift
    model_times = None
    if shift is not None:
        eval_ts = ts[1:-1] if cand.afs else ts[:-1]
        model_times = schedule.t_of_lam(schedule.lam(eval_ts) + jnp.asarray(shift))
    return usf(schedule, ts, cand.steps, afs=cand.afs,
               coefficients=None if coefs is None else jnp.asarray(coefs),
               model_times=model_times)


def with_free_parameters(cand: Candidate, coefficients=True, model_shift=True) -> Candidate:
    """The candidate with zero-initialized free coefficients / network-time offsets."""
    return cand._replace(
        coefficients=(np.zeros((cand.n_steps, MAX_ORDER - 1)) if coefficients and
                      cand.coefficients is None else cand.coefficients),
        model_shift=(np.zeros(cand.nfe) if model_shift and cand.model_shift is None
                     else cand.model_shift),
    )


def uniform_candidate(schedule, nfe: int, step: Step, afs: bool, t_start, t_end) -> Candidate:
    """All steps alike, times uniform in log-SNR."""
    n = n_steps_for(nfe, afs)
    return Candidate(tuple([step] * n), afs, np.zeros(n))


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
