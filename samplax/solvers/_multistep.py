"""Small helpers shared by the multistep constructors (UniPC, DEIS).

Each step's coefficients come from a pure scalar function of its times, run under
``eqx.filter_jit``: it compiles once per (order, method, schedule type) and is
reused for every step and every number of steps, where eager ``jnp`` code would
compile each operation anew for every new array shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def step_orders(n_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Per-step orders: warm-up ``1, 2, .., order``, then ``order``; with
    ``lower_order_final`` also at most the number of steps left (``.., 2, 1``)."""
    out = []
    for i in range(n_steps):
        k = min(order, i + 1)
        if lower_order_final:
            k = min(k, n_steps - i)
        out.append(k)
    return out


def lagrange(nodes: list, j: int, x):
    """Lagrange basis polynomial ``L_j`` of the scalar ``nodes`` at the points ``x``."""
    out = jnp.ones_like(x)
    for m, node in enumerate(nodes):
        if m != j:
            out = out * (x - node) / (nodes[j] - node)
    return out


def solve_vandermonde(r: list, rhs: list) -> list:
    """Solve ``sum_m r_m^a c_m = rhs_a`` (a = 0..K-1) for the scalars ``c_m``.

    Closed form through the Lagrange basis of the nodes ``r``: ``c_m`` is the
    monomial-coefficient vector of ``L_m(x) = prod_{j != m} (x - r_j)/(r_m - r_j)``
    dotted with ``rhs`` (a few scalar operations, no LU; K is at most the order).
    """
    out = []
    for m, rm in enumerate(r):
        poly = [1.0]  # monomial coefficients of prod (x - r_j), lowest degree first
        denom = 1.0
        for j, rj in enumerate(r):
            if j != m:
                shifted = [poly[a - 1] - rj * poly[a] for a in range(1, len(poly))]
                poly = [-rj * poly[0], *shifted, poly[-1]]
                denom = denom * (rm - rj)
        out.append(sum(c * g for c, g in zip(poly, rhs, strict=True)) / denom)
    return out


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {v!r}")
    return bool(v)


def check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def check_choice(name: str, v, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v
