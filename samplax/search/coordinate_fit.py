"""Per-coordinate plan fit: every coefficient of every slot, per coordinate.

After the free-plan fit (:mod:`samplax.search.free_plan`, scalar coefficients)
and the output fit (:mod:`samplax.search.output_fit`, the output combination per
coordinate), this last phase gives each coordinate of the sample its own
coefficients at every slot too: ``evaluate`` and ``update`` become ``x: [K, *F]``,
``d: [K, Hd, *F]``, ``e: [K, He, *F]`` (the executor broadcasts them over the
batch). That is the form of DPM-Solver-v3 (Zheng et al. 2023, "DPM-Solver-v3:
Improved Diffusion ODE Solver with Empirical Model Statistics", Eq. 9-10: its
per-coordinate ``l``, ``s``, ``b`` at every step), with the coefficients fitted to
the teacher through the sampler instead of derived from model statistics, as
Bespoke solvers fit scalar ones (Shaul et al. 2024). The network times and the NFE
stay as they are. A plan with a basis (:attr:`samplax.solvers.plan.Plan.basis`,
:mod:`samplax.search.basis`) gets its coefficients per coordinate of that basis.

Per coordinate and slot there are ``1 + Hd + He`` unknowns, so the fit needs far
more calibration noises than the scalar phases: on the digits model at 8 NFE, the 256
calibration noises alone made the held-out median worse (0.00287 -> 0.00303), 2048
more took it to 0.00256 (benchmarks/RESULTS.md). The noises are therefore split: the
fit sees a part, and the rest decides when to stop; if no iterate beats the starting
plan there, the plan is returned unchanged. The fit is Adam (a linear warm-up, then a
half cosine to 1/100; :mod:`samplax.optimize`) on the gradient through the
sampler: the unknowns are too many for Gauss-Newton.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.optimize import make_minimizer, score_marks
from samplax.search.basis import coordinate_shape
from samplax.search.cost import Cost, adam, sampling
from samplax.search.objective import check_loss, plan_loss
from samplax.solvers.plan import Combo, Plan


def per_coordinate(plan: Plan, feature_shape: tuple[int, ...]) -> Plan:
    """The same plan with its ``evaluate``, ``update`` (and scalar ``final``)
    coefficients broadcast to per-coordinate arrays of trailing shape
    ``feature_shape``: the same samples, now every entry a free unknown."""
    feat = tuple(feature_shape)

    def widen(a, lead):
        a = jnp.asarray(a)
        if a.ndim == lead:
            return jnp.broadcast_to(a.reshape(a.shape + (1,) * len(feat)), a.shape + feat)
        if a.shape[lead:] != feat:
            raise ValueError(f"coefficients of shape {a.shape} are per-coordinate for another "
                             f"sample shape than {feat}")
        return a

    def combo(c: Combo, lead: int) -> Combo:
        return c._replace(x=widen(c.x, lead), d=widen(c.d, lead + 1), e=widen(c.e, lead + 1))

    return plan._replace(evaluate=combo(plan.evaluate, 1), update=combo(plan.update, 1),
                         final=combo(plan.final, 0))


def _check(plan: Plan, x, ref, iters, holdout) -> None:
    if plan.stochastic:
        raise ValueError("the per-coordinate fit needs a deterministic plan (no noise slots)")
    if plan.evaluate.c is not None or plan.update.c is not None:
        raise ValueError("the per-coordinate fit does not support slots with additive "
                         "constants")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of samples [n, ...], got shape {x.shape}")
    if x.shape != ref.shape:
        raise ValueError(f"x {x.shape} and ref {ref.shape} differ in shape")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
    if x.shape[0] < 4:
        raise ValueError(f"the per-coordinate fit needs at least 4 calibration noises, got "
                         f"{x.shape[0]}")


def fit_coordinates(denoiser, plan: Plan, x, ref, *, iters: int = 400, lr: float = 3e-4,
                    loss: str = "log_rmse", holdout: float = 0.25,
                    checks: int = 16) -> tuple[Plan, float, float, bool]:
    """Fit per-coordinate coefficients of every slot of ``plan`` to a teacher.

    Args:
        denoiser: the model.
        plan: a deterministic plan (scalar or per-coordinate coefficients).
        x, ref: calibration noises ``[n, *F]`` and the teacher's samples for them;
            every ``round(1 / holdout)``-th one (a fraction ``holdout``) is kept
            out of the fit to choose the iterate.
        iters: Adam steps; ``lr``: the peak learning rate (reached after a tenth
            of them, then decaying along a half cosine to ``lr / 100``).
        loss: the objective, a name in :data:`samplax.search.objective.LOSSES`.
        checks: how many times (evenly spaced) the held-out part is scored.

    Returns:
        ``(plan, loss before, loss after, applied)``: the per-coordinate plan whose
        iterate scored best on the held-out part, if it beat the starting plan there
        (``applied``), else ``plan`` itself; the losses are on the held-out part.
    """
    x, ref = jnp.asarray(x), jnp.asarray(ref)
    _check(plan, x, ref, iters, holdout)
    check_loss(loss)
    val = _kept_out(x.shape[0], holdout)
    x_fit, ref_fit, x_val, ref_val = x[~val], ref[~val], x[val], ref[val]
    wide = per_coordinate(plan, coordinate_shape(plan, x.shape[1:]))
    params = (wide.evaluate, wide.update, wide.final)

    def objective(p, xs, refs):
        e, u, f = p
        return plan_loss(denoiser, wide._replace(evaluate=e, update=u, final=f), xs, refs, loss)

    warm = max(iters // 10, 1)
    rate = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(iters, warm + 1), lr / 100)
    fit = make_minimizer(lambda p, _: objective(p, x_fit, ref_fit))
    score = jax.jit(lambda p: objective(p, x_val, ref_val))
    out = fit.run(params, iters=iters, lr=rate, score=score, checks=checks)
    if not out.loss < out.start:
        return plan, out.start, out.start, False
    e, u, f = out.params
    return wide._replace(evaluate=e, update=u, final=f), out.start, out.loss, True


def _kept_out(n: int, holdout: float) -> np.ndarray:
    """Which of ``n`` noises choose the iterate: every ``round(1 / holdout)``-th."""
    every = max(int(round(1.0 / holdout)), 2)
    return np.arange(n) % every == every - 1


def fit_cost(n: int, nfe: int, *, iters: int = 400, holdout: float = 0.25,
             checks: int = 16) -> Cost:
    """The network evaluations of :func:`fit_coordinates` on ``n`` noises and a plan of
    ``nfe`` evaluations: Adam on the fitting part, the kept-out part scored at the
    start and ``checks`` times."""
    n_val = int(_kept_out(n, holdout).sum())
    return adam(n - n_val, nfe, iters) + sampling(n_val, nfe, 1 + len(score_marks(iters,
                                                                                  checks)))


def fitting_noises(teacher):
    """The calibration noises and, when the teacher has them, its extra fitting
    noises, together (never the held-out ones)."""
    if teacher.x_fit is None:
        return teacher.x_cal, teacher.ref_cal
    return (jnp.concatenate([teacher.x_cal, teacher.x_fit]),
            jnp.concatenate([teacher.ref_cal, teacher.ref_fit]))


__all__ = ["fit_coordinates", "fit_cost", "fitting_noises", "per_coordinate"]
