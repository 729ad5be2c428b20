"""What a search costs, in network evaluations of one sample.

On a real model the cost of a search is its network passes, so every phase counts
what it runs, in *sample-evaluations*: one sample through the network once. A
forward pass counts one ``forward``; the reverse-mode pass of a gradient (one vjp)
one ``backward``; a forward-mode derivative (one jvp tangent, as the
Levenberg-Marquardt Jacobian takes them) one ``tangent``. ``total`` adds the three:
each is about one network pass (a backward or tangent pass costs 1-3 forward passes
of compute on most networks, but one evaluation in the count, as the issue that
asked for it defines).

The counts are computed from the shapes and iteration counts of what each phase
runs (a batch of ``n`` noises through a plan of ``K`` evaluations is ``n K``), not
measured; tests/test_search_cost.py checks every one of them against a denoiser
that counts its own calls.
"""

from __future__ import annotations

from typing import NamedTuple


class Cost(NamedTuple):
    """Sample-evaluations by kind (module docstring)."""

    forward: int = 0
    backward: int = 0
    tangent: int = 0

    def __add__(self, other: Cost) -> Cost:  # type: ignore[override]
        return Cost(*(int(a) + int(b) for a, b in zip(self, other)))

    @property
    def total(self) -> int:
        return int(self.forward + self.backward + self.tangent)

    def to_json(self) -> dict:
        return {"forward": int(self.forward), "backward": int(self.backward),
                "tangent": int(self.tangent), "total": self.total}

    @classmethod
    def from_json(cls, obj: dict) -> Cost:
        return cls(int(obj["forward"]), int(obj["backward"]), int(obj["tangent"]))


def sampling(n: int, nfe: int, times: int = 1) -> Cost:
    """``times`` runs of a plan of ``nfe`` evaluations on ``n`` noises."""
    return Cost(forward=int(times) * int(n) * int(nfe))


def adam(n: int, nfe: int, iters: int, candidates: int = 1) -> Cost:
    """:meth:`samplax.optimize.Minimizer.run` of ``iters`` steps on ``candidates``
    plans at once: the starting loss, then a value and a gradient per step."""
    per = int(n) * int(nfe) * int(candidates)
    return Cost(forward=per * (1 + int(iters)), backward=per * int(iters))


def total(costs: dict[str, Cost]) -> Cost:
    out = Cost()
    for c in costs.values():
        out = out + c
    return out


__all__ = ["Cost", "adam", "sampling", "total"]
