"""Cost accounting: how many network evaluations a (guided) denoiser costs per slot.

Every transform in :mod:`samplax.guidance` declares a ``cost`` attribute, a
:class:`Cost` of *forward* and *backward* network passes per NFE slot and per
sample. A plain denoiser costs one forward pass; classifier-free guidance
evaluates the network on the conditional and the unconditional batch (two
forward passes, even when they run as one batched call of twice the batch);
gradient guidance through the denoiser adds one backward pass per forward pass.
:func:`nfe_report` multiplies these by the slots of a plan, per
:class:`~samplax.solvers.executor.Segments` range, so an NFE budget (and the
schedule search) counts guidance honestly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from samplax.solvers.executor import Segments


@dataclass(frozen=True)
class Cost:
    """Network passes per slot and per sample: ``forward`` and ``backward`` (vjp) passes.

    Costs add (``Cost(1) + Cost(1) == Cost(2)``) and scale by numbers
    (``3 * Cost(1, 1) == Cost(3, 3)``).
    """

    forward: float = 1
    backward: float = 0

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, k) -> Cost:
        return Cost(self.forward * k, self.backward * k)

    __rmul__ = __mul__


FREE = Cost(0, 0)


def cost_of(denoiser) -> Cost:
    """The declared :class:`Cost` of a denoiser: its ``cost`` attribute, else one forward pass."""
    c = getattr(denoiser, "cost", None)
    if c is None:
        return Cost(1, 0)
    if not isinstance(c, Cost):
        raise TypeError(f"a denoiser's cost must be a Cost, got {c!r}")
    return c


def with_backward(c: Cost) -> Cost:
    """The cost of differentiating through a denoiser of cost ``c`` (a vjp per forward pass)."""
    return Cost(c.forward, c.backward + c.forward)


class SegmentCost(NamedTuple):
    """Slots ``start .. end - 1`` run a denoiser of cost ``per_slot``."""

    start: int
    end: int
    per_slot: Cost

    @property
    def total(self) -> Cost:
        return self.per_slot * (self.end - self.start)


class NFEReport(NamedTuple):
    """Network evaluations of one sampling run, per sample.

    Attributes:
        slots: NFE slots of the plan (calls of the denoiser).
        forward: forward network passes, summed over the slots (the usual "NFE"
            of a guided sampler: CFG doubles it).
        backward: backward (vjp) passes, summed over the slots.
        segments: the per-range breakdown.
    """

    slots: int
    forward: float
    backward: float
    segments: tuple[SegmentCost, ...]

    @property
    def nfe(self) -> float:
        """Forward network evaluations (what an NFE budget usually counts)."""
        return self.forward

    def passes(self, backward_weight: float = 1.0) -> float:
        """``forward + backward_weight * backward`` (a backward pass costs ~2 forward)."""
        return self.forward + backward_weight * self.backward


def nfe_report(plan: Any, denoiser) -> NFEReport:
    """Count the network evaluations of ``sample(denoiser, plan, ...)`` exactly.

    Args:
        plan: a :class:`~samplax.solvers.plan.Plan` (its number of slots is static).
        denoiser: a denoiser (its :func:`cost_of`) or
            :class:`~samplax.solvers.executor.Segments` of denoisers.

    Example::

        b = branches(model, cond, null)
        nfe_report(plan, cfg(b, 4.0)).nfe                     # 2 * plan.nfe
        den = guidance_interval(plan, cfg(b, 4.0), b.conditional(), 0.3, 5.0)
        nfe_report(plan, den).nfe                             # plan.nfe + slots inside
    """
    K = int(plan.t.shape[-1])
    if isinstance(denoiser, Segments):
        starts = [int(s) for s in denoiser.starts]
        ends = starts[1:] + [K]
        parts = zip(denoiser.denoisers, starts, ends, strict=True)
        segs = tuple(SegmentCost(a, b, cost_of(d)) for d, a, b in parts)
    else:
        segs = (SegmentCost(0, K, cost_of(denoiser)),)
    total = Cost(0, 0)
    for s in segs:
        total = total + s.total
    return NFEReport(K, total.forward, total.backward, segs)
