"""A unified exponential-integrator solver with per-step choices (USF).

Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models" (USF / S^3). Each step ``s -> t`` (``h = lam_t - lam_s``)
integrates the exact exponential-integrator form with the model output replaced
by its Lagrange interpolant in ``lam`` through chosen nodes:

* data form (DPM-Solver++ eq. 9): ``x_t = (sigma_t/sigma_s) x_s
  + alpha_t h sum_j w_j D_j`` with ``w = V^{-T} g``, ``g_m = m! phi_{m+1}(-h)``;
* noise form (DPM-Solver eq. 5): ``x_t = (alpha_t/alpha_s) x_s
  - sigma_t h sum_j w_j E_j`` with ``g_m = m! phi_{m+1}(h)``;

where ``V_{jm} = r_j^m`` and ``r_j = (lam_j - lam_s)/h`` are the nodes' positions
(``r = 0`` the current point, negative for past outputs, ``1`` for the
corrector's new point). ``int_0^1 e^{z(1-r)} r^m dr = m! phi_{m+1}(z)``, so the
weights are the exact integrals of the interpolant: order ``p`` nodes give a
step of local order ``p + 1`` (global order ``p``).

Per step the choices are data: the prediction type, the number of nodes
(order), a UniC-style corrector (Zhao et al. 2023, sec. 3.1: re-use the next
evaluation, at the predicted point, to re-integrate the step with one more node;
free of NFE), and optional free coefficients that add
``alpha_t sum_m c_m (D_s - D_{s-m})`` (data) or ``sigma_t sum_m c_m (E_s - E_{s-m})``
(noise): differences, so a constant model output is still integrated exactly
(the compensation of DC-Solver, Zhao et al. 2024, as free parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp

from samplax.numerics import phi
from samplax.solvers._common import analytic_first_output, check_timesteps
from samplax.solvers.plan import Lin, Output, Plan, PlanBuilder, lin_sum

MAX_ORDER = 4


class Step(NamedTuple):
    """The solver's choice for one step (USF decision space).

    Attributes:
        prediction: ``"data"`` (x0) or ``"noise"`` (epsilon) form of the step.
        order: number of interpolation nodes of the predictor (1..4): the newest
            outputs, current point first. Capped by the outputs available.
        corrector: correct the step with the next evaluation (no extra NFE). Ignored
            on the last step, which has no next evaluation.
    """

    prediction: str = "data"
    order: int = 2
    corrector: bool = False


def interpolation_weights(r, h, prediction: str):
    """Exact weights ``w`` of ``int_0^1 e^{z(1-u)} P(u) du`` for the interpolant ``P``.

    ``r``: node positions ``[p]`` in units of ``h`` (the current point is 0);
    ``z = -h`` for the data form, ``+h`` for the noise form.
    """
    p = len(r)
    z = -h if prediction == "data" else h
    g = jnp.stack([math.factorial(m) * phi(m + 1, z) for m in range(p)])
    if p == 1:
        return g
    V = jnp.stack([jnp.stack([rj**m for m in range(p)]) for rj in r])  # V[j, m] = r_j^m
    return jnp.linalg.solve(V.T, g)


def exponential_step(
    schedule, x: Lin, s, t, nodes: Sequence[Output], prediction: str, *, last: bool = False
) -> Lin:
    """One exponential-integrator step from ``(x, s)`` to ``t`` through ``nodes``.

    ``nodes[0]`` must be the output at ``s``. One node is the first-order step
    (DDIM / DPM-Solver-1). With ``last=True`` the step may reach ``sigma_t = 0``
    (``h = inf``): there every higher-order term vanishes and the noise form is
    undefined, so the step is replaced, by value, with the first-order data step,
    exact there. Doing it by value (not by a Python check on the times) keeps the
    plan finite, and its gradient too, when the times are traced.
    """
    lam_s, lam_t = schedule.lam(s), schedule.lam(t)
    h = lam_t - lam_s
    first_data = schedule.sigma(t) / schedule.sigma(s) * x - schedule.alpha(t) * jnp.expm1(
        -h
    ) * nodes[0].d
    if prediction == "data" and len(nodes) == 1:
        return first_data  # written without h: exact for h = inf
    at_zero = jnp.isinf(h) if last else False
    h_ = jnp.where(at_zero, 1.0, h) if last else h
    if prediction == "data":
        w = interpolation_weights([(n.lam - lam_s) / h_ for n in nodes], h_, "data")
        step = schedule.sigma(t) / schedule.sigma(s) * x + schedule.alpha(t) * h_ * lin_sum(
            [n.d for n in nodes], list(w)
        )
    elif prediction == "noise":
        w = interpolation_weights([(n.lam - lam_s) / h_ for n in nodes], h_, "noise")
        sigma_t = jnp.where(at_zero, 0.0, schedule.sigma(t)) if last else schedule.sigma(t)
        step = schedule.alpha(t) / schedule.alpha(s) * x - sigma_t * h_ * lin_sum(
            [n.e for n in nodes], list(w)
        )
    else:
        raise ValueError(f"unknown prediction type {prediction!r}; use 'data' or 'noise'")
    if not last:
        return step
    m = at_zero.astype(h.dtype)
    return step * (1.0 - m) + first_data * m


def _as_steps(steps, n: int) -> list[Step]:
    steps = [steps] * n if isinstance(steps, Step) else list(steps)
    if len(steps) != n:
        raise ValueError(f"got {len(steps)} step choices for {n} steps")
    for i, st in enumerate(steps):
        if not isinstance(st, Step):
            raise TypeError(f"step {i}: expected samplax.solvers.usf.Step, got {type(st)}")
        if st.prediction not in ("data", "noise"):
            raise ValueError(f"step {i}: prediction must be 'data' or 'noise', got {st.prediction!r}")
        if not 1 <= st.order <= MAX_ORDER:
            raise ValueError(f"step {i}: order must be in 1..{MAX_ORDER}, got {st.order}")
    return steps


def usf(
    schedule,
    timesteps,
    steps: Step | Sequence[Step] = Step(),
    *,
    afs: bool = False,
    coefficients=None,
    model_times=None,
) -> Plan:
    """A plan with a per-step solver schedule (USF / S^3, Liu et al. 2023).

    Args:
        schedule: the noise schedule.
        timesteps: ``N + 1`` strictly decreasing times.
        steps: one :class:`Step` for all steps, or a sequence of ``N``.
        afs: analytical first step: the output at ``t_0`` is ``x0_hat = 0``,
            ``eps_hat = x_T/sigma(t_0)`` without a network call (NFE = N - 1).
        coefficients: optional ``[N, MAX_ORDER - 1]`` free coefficients (see the
            module docstring); zeros reproduce the plain steps.
        model_times: optional times passed to the network, one per evaluation
            (decoupled from the solver's times); default: the solver's times.

    NFE is ``N`` (``N - 1`` with ``afs``). A last step that reaches ``sigma = 0``
    is taken in first-order data form whatever its choice: exact there, and the
    only finite option (higher-order terms and the noise form are undefined).
    """
    ts = check_timesteps(schedule, timesteps)
    n = ts.shape[0] - 1
    choices = _as_steps(steps, n)
    if afs and n < 2:
        raise ValueError("afs needs at least 2 steps (the first one is free)")
    if coefficients is not None:
        coefficients = jnp.asarray(coefficients)
        if coefficients.shape != (n, MAX_ORDER - 1):
            raise ValueError(
                f"coefficients must have shape ({n}, {MAX_ORDER - 1}), got {coefficients.shape}"
            )
    nfe = n - 1 if afs else n
    if model_times is not None:
        model_times = jnp.asarray(model_times)
        if model_times.shape != (nfe,):
            raise ValueError(f"model_times must have shape ({nfe},), got {model_times.shape}")

    b = PlanBuilder(schedule)
    n_evals = 0

    def evaluate(point, t):
        nonlocal n_evals
        mt = None if model_times is None else model_times[n_evals]
        n_evals += 1
        return b.evaluate(point, t, model_t=mt)

    outs: list[Output] = [analytic_first_output(b, ts[0]) if afs else evaluate(b.x, ts[0])]
    for i in range(n):
        s, t = ts[i], ts[i + 1]
        st = choices[i]
        last = i == n - 1
        order = min(st.order, len(outs))
        nodes = outs[::-1][:order]
        pred = exponential_step(schedule, b.x, s, t, nodes, st.prediction, last=last)
        if coefficients is not None:
            free = _free_terms(schedule, t, outs, coefficients[i], st.prediction)
            if last:  # no free terms on a step that reaches sigma = 0
                free = free * (1.0 - jnp.isinf(schedule.lam(t)).astype(ts.dtype))
            pred = pred + free
        if last:
            b.set_x(pred)
            break
        new = evaluate(pred, t)
        if st.corrector:
            c_nodes = [new] + outs[::-1][: min(order, MAX_ORDER - 1)]
            b.set_x(_corrector_step(schedule, b.x, s, t, c_nodes, st.prediction))
        else:
            b.set_x(pred)
        outs.append(new)
    return b.build()


def _corrector_step(schedule, x, s, t, nodes, prediction):
    # exponential_step wants the current point first; order the nodes so.
    return exponential_step(schedule, x, s, t, nodes[1:2] + nodes[:1] + nodes[2:], prediction)


def _free_terms(schedule, t, outs, coef, prediction):
    cur = outs[-1]
    terms = Lin()
    for m in range(1, min(len(outs), MAX_ORDER)):
        past = outs[-1 - m]
        if prediction == "data":
            terms = terms + schedule.alpha(t) * coef[m - 1] * (cur.d - past.d)
        else:
            terms = terms + schedule.sigma(t) * coef[m - 1] * (cur.e - past.e)
    return terms
