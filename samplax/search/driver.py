"""The one driver of a search pipeline: skip check, run, checkpoint, time limit, progress.

In the manner of blackjax's window adaptation, the schedule of phases is data (a
list of :class:`~samplax.search.phases.Phase` objects) and this loop is the only
code that runs it. After every step of a phase (a generation, a fit) the state is
handed to ``save``, so a search killed at any point resumes from its last finished
step and, with the same settings, reaches the same result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

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


def run_phases(phases: Sequence, state: SearchState, ctx, *, clock: Clock | None = None,
               save: Callable[[SearchState], None] | None = None,
               progress: Progress | None = None) -> SearchState:
    """Run ``phases`` in order on ``state``: each phase already done is passed over,
    one that says why it does not apply is recorded in ``state.skipped``, the others
    are stepped until done; ``save(state)`` after every step. No step starts past
    ``clock``'s limit, nor one that its phase's last step says would end past it; the
    phases left are skipped for the time limit, with the time they would have needed
    where a step of theirs was timed."""
    clock = clock or Clock.started(state.seconds)
    skipped = {}
    for phase in phases:
        if phase.done(state):
            continue
        reason, last = phase.skip(state, ctx), None
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
                progress.update(note, desc=phase.name)
        if reason is not None:
            skipped[phase.name] = reason
    return state._replace(skipped=skipped, seconds=clock.elapsed())


__all__ = ["Clock", "Progress", "run_phases"]
