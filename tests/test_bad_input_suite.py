"""Every case of ``tests/bad_inputs.py`` (schedules, step schedules, solvers, sample,
guidance, adapters, result files, the command line) is refused with a message that
names the problem, or handled correctly: none is silent, unclear or slow."""

import pytest
from bad_inputs import CASES, classify


@pytest.mark.parametrize("case", CASES, ids=[c.cid for c in CASES])
def test_a_bad_input_is_refused_by_name_or_handled(case):
    kind, exc, msg, seconds = classify(case)
    assert kind in ("clear", "sensible"), (
        f"{case.cid} {case.expr}: {kind} after {seconds:.1f} s: {exc}: {msg[:400]}")
