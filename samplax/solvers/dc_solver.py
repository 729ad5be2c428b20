"""DC-Solver: dynamic compensation for the UniPC predictor-corrector (Zhao et al. 2024).

Zhao, Wang, Bai, Rao, Zhou & Lu, "DC-Solver: Improving Predictor-Corrector Diffusion
Sampler via Dynamic Compensation", ECCV 2024 (arXiv:2409.03755); official code
``wl-zhao/DC-Solver``. UniPC's corrector keeps, for the next steps, the model
output evaluated at the *predicted* point while the state moves to the corrected
one: the history is misaligned. DC-Solver replaces the newest output before each
step by the Lagrange interpolant (in the schedule's time) of the last
``dc_order + 1`` outputs, evaluated at a shifted time (official
``dynamic_compensation``)::

    t' = rho_i t_i + (1 - rho_i) t_{i-1},     m_i <- sum_j L_j(t') m_{i-j},

with one *compensation ratio* ``rho_i`` per step; ``rho_i = 1`` is plain UniPC
exactly (``L_0(t_i) = 1``, the others vanish). Steps with fewer than
``dc_order + 1`` outputs are not compensated. The compensated value stays in the
history (as in the official code). The ratios are found per model and NFE by
matching a reference trajectory on a few samples (official
``search_dc``: AdamW, lr 0.1, 40 iterations per step, greedily), which
:func:`fit_dc_ratios` follows with optax's Adam. The UniPC step weights are UniPC's own
(:func:`samplax.solvers.unipc.unipc`'s ``_step_weights``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from samplax.optimize import make_minimizer
from samplax.solvers._common import check_timesteps, reaches_zero_noise
from samplax.solvers._multistep import step_orders
from samplax.solvers.plan import Plan, lin_sum
from samplax.solvers.unipc import VARIANTS, _step_weights, build_unipc


def compensation_weights(times: list, rho):
    """``L_j(t')`` for the nodes ``times`` (newest first) at ``t' = rho t_0 + (1 - rho) t_1``."""
    tp = rho * times[0] + (1.0 - rho) * times[1]
    out = []
    for j, tj in enumerate(times):
        c = 1.0
        for m, tm in enumerate(times):
            if m != j:
                c = c * (tp - tm) / (tj - tm)
        out.append(c)
    return out


def dc_unipc(
    schedule,
    timesteps,
    ratios=None,
    order: int = 3,
    variant: str = "bh2",
    predict_x0: bool = True,
    dc_order: int = 2,
    lower_order_final: bool = True,
) -> Plan:
    """UniPC with DC-Solver's dynamic compensation (module docstring).

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing times (``N`` steps).
        ratios: ``[N]`` compensation ratios (``None`` or all ones: plain UniPC);
            traced values are fine (the plan is differentiable in them).
        order: UniPC predictor order; the corrector is on for every step but the last.
        variant: ``'bh1'``, ``'bh2'`` or ``'vary_coeff'`` (see
            :func:`~samplax.solvers.unipc.unipc`).
        predict_x0: data (default) or noise form.
        dc_order: degree of the compensation polynomial (uses ``dc_order + 1`` outputs).
        lower_order_final: UniPC's lowering of the last orders.

    Returns:
        A deterministic plan; NFE = ``N``; with all ratios 1 it equals
        ``unipc(schedule, timesteps, order, variant, predict_x0, corrector=True,
        lower_order_final=lower_order_final)``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if isinstance(dc_order, bool) or not isinstance(dc_order, int) or dc_order < 1:
        raise ValueError(f"dc_order must be an integer >= 1, got {dc_order!r}")
    ts = check_timesteps(schedule, timesteps)
    n = int(ts.shape[0]) - 1
    ratios = jnp.ones((n,)) if ratios is None else jnp.asarray(ratios)
    if ratios.shape != (n,):
        raise ValueError(f"ratios must have shape ({n},), got {ratios.shape}")

    def compensate(i, t, history):
        if i < dc_order:
            return history[-1]
        w = compensation_weights([t[i - j] for j in range(dc_order + 1)], ratios[i])
        return lin_sum(history[::-1][: dc_order + 1], w)

    return build_unipc(schedule, ts, step_orders(n, order, lower_order_final), variant,
                       predict_x0, [True] * n, compensate=compensate)


def fit_dc_ratios(
    denoiser,
    schedule,
    timesteps,
    x_T,
    reference,
    *,
    order: int = 3,
    variant: str = "bh2",
    predict_x0: bool = True,
    dc_order: int = 2,
    lower_order_final: bool = True,
    steps: int = 40,
    learning_rate: float = 0.1,
):
    """Fit DC-Solver's ratios on a few samples against a reference trajectory.

    The official search (``search_dc``), step by step: for step ``i`` (once
    ``dc_order + 1`` outputs exist) ``rho_i`` minimizes the mean squared error of
    the state after the step, corrector included (one network call inside the
    loss), against the reference state at ``t_{i+1}``, with Adam (``optax``,
    ``steps`` iterations from ``rho_i = 1``, learning rate 0.1 as the official
    AdamW); then the step is taken with the fitted ratio and the next one is fitted
    from there. The sampler's own states (not the reference's) carry over, as in
    the official code.

    Args:
        denoiser: ``D(x, t) -> x0_hat``.
        schedule, timesteps: as :func:`dc_unipc`.
        x_T: ``[n, *F]`` calibration noise (keep it disjoint from evaluation noise).
        reference: ``[N + 1, n, *F]`` the reference states at ``timesteps`` from
            ``x_T`` (e.g. :func:`samplax.models.reference_solve`).

    Returns:
        ``(ratios [N], losses [N])``: per step the loss before and after fitting
        as ``losses[i] = (initial, final)`` (``nan`` where not compensated).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    ts = check_timesteps(schedule, timesteps)
    n = int(ts.shape[0]) - 1
    reference = jnp.asarray(reference)
    if reference.shape[0] != n + 1:
        raise ValueError(f"reference needs {n + 1} states (one per time), got {reference.shape}")
    orders = step_orders(n, order, lower_order_final)
    if reaches_zero_noise(schedule, ts[-1]):
        orders[-1] = 1
    t = list(ts)
    flags = jnp.array([variant == "bh1", variant != "vary_coeff", predict_x0])

    def output(x, s):
        d = denoiser(x, s)
        return d if predict_x0 else (x - schedule.alpha(s) * d) / schedule.sigma(s)

    def step(x, ms, pw, cw, t_next, last):
        pred = pw[0] * x + sum(w * m for w, m in zip(pw[1:], ms))
        if last:
            return pred, None
        m_new = output(pred, t_next)
        corr = cw[0] * x + sum(w * m for w, m in zip(cw[1:-1], ms)) + cw[-1] * m_new
        return corr, m_new

    def compensated(hist, rho, nodes):
        w = compensation_weights(nodes, rho)
        return sum(wj * m for wj, m in zip(w, hist[::-1][: len(nodes)]))

    @functools.partial(jax.jit, static_argnums=(5,))
    def loss(rho, x, hist, pw, cw, last, nodes, t_next, target):
        hist = list(hist[:-1]) + [compensated(hist, rho, list(nodes))]
        k = len(pw) - 1
        out, _ = step(x, hist[: -k - 1 : -1], pw, cw, t_next, last)
        return jnp.mean((out - target) ** 2)

    # keep-best Adam (the official code keeps the last iterate): one minimizer per
    # value of the static ``last``
    fits = {last: make_minimizer(lambda rho, a, last=last: loss(rho, *a[:4], last, *a[4:]))
            for last in (False, True)}
    x = jnp.asarray(x_T)
    hist = [output(x, t[0])]
    rhos, losses = [], []
    for i in range(n):
        k = orders[i]
        last = i == n - 1
        pw, cw = _step_weights(schedule, t[i], t[i + 1], tuple(t[i - m] for m in range(1, k)),
                               flags)
        rho = jnp.asarray(1.0)
        if i >= dc_order:
            nodes = tuple(t[i - j] for j in range(dc_order + 1))
            args = (x, tuple(hist[-max(k, dc_order + 1):]), pw, cw, last, nodes, t[i + 1],
                    reference[i + 1])
            aux = args[:4] + args[5:]
            out = fits[last].run(rho, aux, iters=steps, lr=learning_rate)
            rho = out.params
            losses.append((float(out.start), float(out.loss)))
            hist[-1] = compensated(hist, rho, list(nodes))
        else:
            losses.append((float("nan"), float("nan")))
        rhos.append(rho)
        x, m_new = step(x, hist[: -k - 1 : -1], pw, cw, t[i + 1], last)
        if m_new is not None:
            hist.append(m_new)
    return jnp.stack(rhos), np.asarray(losses)


__all__ = ["compensation_weights", "dc_unipc", "fit_dc_ratios"]
