"""The one driver of a search pipeline: skip check, run, checkpoint, time limit, progress.

In the manner of blackjax's window adaptation, the schedule of phases is data (a
list of :class:`~samplax.search.phases.Phase` objects) and this loop is the only
code that runs it. After every step of a phase (a generation, a fit) the state is
handed to ``save``, so a search killed at any point resumes from its last finished
step and, with the same settings, reaches the same result.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from samplax.search.cost import Cost
from samplax.search.phases import NO_CANDIDATE
from samplax.search.state import SearchState


class Clock(NamedTuple):
    """Seconds spent: ``offset`` before this run (a resumed search) plus this run's;
    ``limit``: the seconds after which no new step starts (None: no limit)."""

    start: float
    offset: float = 0.0
    limit: float | None = None

    @classmethod
    def started(cls, offset: float = 0.0, limit: float | None = None) -> Clock:
        return cls(time.perf_counter(), offset, limit)

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left before the limit (infinite without one)."""
        if self.limit is None:
            return float("inf")
        return self.limit - (time.perf_counter() - self.start)


class Progress:
    """Progress of a long step, on stderr: a tqdm bar (elapsed time, estimate) on a
    terminal, one plain line per update elsewhere (logs stay clean), nothing when
    disabled."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step"):
        self.bar, self.enabled, self.desc = None, enabled, desc
        self.total, self.done, self.start = total, 0, time.perf_counter()
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit)
            except ImportError:  # then plain lines
                self.bar = None

    def update(self, note: str = "", n: int = 1, desc: str | None = None) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_description(desc or self.desc)
            self.bar.set_postfix_str(note)
            self.bar.update(n)
        elif self.enabled:
            print(f"[{desc or self.desc} {time.perf_counter() - self.start:.0f} s, "
                  f"{self.done}/{self.total}]{' ' + note if note else ''}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loss(state: SearchState, name: str) -> float | None:
    rec = state.records.get(name) or {}
    if "loss" in rec:
        return rec["loss"]
    best = state.best()
    return None if best is None else best[1].loss


def plan_shares(phases: Sequence, state: SearchState, ctx, budget: int) -> dict:
    """Each phase's share of ``budget`` sample-evaluations: its estimate
    (:meth:`~samplax.search.phases.Phase.estimate`) if all fit; else each its
    smallest useful cut (:meth:`~samplax.search.phases.Phase.least`, in order, while
    they fit) and the rest in proportion to what each would spend beyond it."""
    # a phase that will skip whatever runs before it needs no share
    todo = [p for p in phases if not p.done(state)
            and p.skip(state, ctx) in (None, NO_CANDIDATE)]
    est = {p.name: p.estimate(state, ctx).total for p in todo}
    if sum(est.values()) <= budget:
        return est
    shares, left = {}, budget
    for p in todo:
        least = min(p.least(state, ctx).total, est[p.name])
        shares[p.name] = least if least <= left else 0
        left -= shares[p.name]
    extra = {k: est[k] - v for k, v in shares.items() if v or not est[k]}
    more = sum(extra.values())
    return {k: v + (left * extra.get(k, 0) // more if more else 0) for k, v in shares.items()}


def _budgeted(phase, phases: Sequence, state: SearchState, ctx, budget: dict):
    """``phase`` cut to what the budget leaves it, and the budget record with the
    shares planned again for it and the phases after it: the estimates of a later
    phase are better once the earlier ones have run (the size of the plan a fit
    tunes). Returns ``(phase or None, evaluations left for it, record)``."""
    i = [q.name for q in phases].index(phase.name)
    spent = sum(state.cost.values(), Cost()).total
    shares = plan_shares(phases[i:], state, ctx, max(budget["phases"] - spent, 0))
    left = budget["phases"] - spent - sum(v for k, v in shares.items() if k != phase.name)
    return phase.within(left, state, ctx), left, {**budget, "shares": shares}


def run_phases(phases: Sequence, state: SearchState, ctx, *, clock: Clock | None = None,
               save: Callable[[SearchState], None] | None = None,
               progress: Progress | None = None, budget: int | None = None) -> SearchState:
    """Run ``phases`` in order on ``state``: each phase already done is passed over,
    one that says why it does not apply is recorded in ``state.skipped``, the others
    are stepped until done; ``save(state)`` after every step. No step starts past
    ``clock``'s limit, nor one that its phase's last step says would end past it; the
    phases left are skipped for the time limit, with the time they would have needed
    where a step of theirs was timed.

    ``budget``: the sample-evaluations the phases may spend in all (kept in the
    state, so a resumed search keeps it). Before each phase the shares of it and the
    phases after it are planned from what is left (:func:`plan_shares`); the phase is
    cut to all that the later phases' shares leave
    (:meth:`~samplax.search.phases.Phase.within`), or skipped if not even its
    smallest useful step fits."""
    clock = clock or Clock.started(state.seconds)
    if budget is not None and "budget" not in state.records:
        # the total only: the shares are planned before each phase (_budgeted)
        spent = sum(state.cost.values(), Cost()).total
        state = state.with_record("budget", {"phases": int(budget) + spent})
    skipped = {}
    for phase in phases:
        if phase.done(state):
            continue
        reason, last = phase.skip(state, ctx), None
        if reason is None and budget is not None:
            cut, left, record = _budgeted(phase, phases, state, ctx,
                                          state.records["budget"])
            state = state.with_record("budget", record)
            if cut is None:
                reason = (f"evaluation budget (about {phase.estimate(state, ctx).total} "
                          f"evaluations; {max(left, 0)} left for it)")
            elif cut != phase:
                state = state.with_record("budget", {
                    **state.records["budget"],
                    "cut": {**state.records["budget"].get("cut", {}),
                            phase.name: _changed(phase, cut)}})
                phase = cut
        while reason is None and not phase.done(state):
            if clock.left() <= 0 or (last is not None and clock.left() < last):
                reason = "time limit" + ("" if last is None else
                                         f" (about {last * phase.steps_left(state, ctx):.0f} s"
                                         " more)")
                break
            began = time.perf_counter()
            state = phase.step(state, ctx)
            last = time.perf_counter() - began
            state = state.timed(phase.name, last)._replace(seconds=clock.elapsed())
            if save is not None:
                save(state)
            if progress is not None:
                loss = _loss(state, phase.name)
                note = phase.progress(state)
                if loss is not None:
                    note = f"{note}{'; ' if note else ''}best calibration loss {loss:.4g}"
                spent = sum(state.cost.values(), Cost()).total
                note = f"{note}{'; ' if note else ''}{spent:,} evaluations"
                progress.update(note, desc=phase.name)
        if reason is not None:
            skipped[phase.name] = reason
    return state._replace(skipped=skipped, seconds=clock.elapsed())


def _changed(old, new) -> dict:
    """The settings a budget changed: ``{field: [before, after]}``."""
    return {f.name: [getattr(old, f.name), getattr(new, f.name)]
            for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)}


__all__ = ["Clock", "Progress", "plan_shares", "run_phases"]
