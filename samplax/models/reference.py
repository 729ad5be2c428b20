"""High-accuracy reference solutions of the probability-flow ODE with diffrax.

In the EDM variables ``x_tilde = x/alpha`` and ``lam`` the PF-ODE is
``d x_tilde / d lam = D(alpha x_tilde, t(lam)) - x_tilde`` for *every* noise
schedule (Karras et al. 2022 eq. 4 with ``sigma_tilde = e^{-lam}``): a smooth,
non-stiff equation that an adaptive high-order solver integrates to round-off.
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp

from samplax.schedules.base import NoiseSchedule

# Past this half log-SNR (sigma/alpha = e^-30, about 1e-13) the remaining flow to
# sigma = 0 moves x_tilde by less than float64 resolution of typical data.
LAM_CAP = 30.0

# diffrax's Dopri8 has 14 stages, the last evaluated at the step's end and reused as
# the next step's first (FSAL): 13 new evaluations per step, accepted or rejected,
# and one at the start (tests/test_search_cost.py counts them).
DOPRI8_EVALS_PER_STEP = 13

# The tolerances of the reference by the solve's dtype. float64: round-off level.
# float32 (also the solve of bfloat16 and float16 models): 1e-5, measured on gmm64
# (benchmarks/teacher.py) at a held-out median error of 7e-7 against the float64
# solve and 274 evaluations per batch, against 690 at 1e-10; tighter float32
# tolerances cost 1.4-2.9x more and gain nothing (float32 round-off dominates).
RTOL = {"float64": 1e-10, "float32": 1e-5}


def solve_dtype(dtype):
    """The dtype a reference solve of ``dtype`` states runs in: at least float32, so
    a bfloat16 model's teacher still accumulates in float32."""
    return jnp.promote_types(dtype, jnp.float32)


def reference_tolerance(dtype) -> float:
    """The default ``rtol = atol`` of :func:`reference_solve` for states of ``dtype``."""
    return RTOL["float64" if solve_dtype(dtype) == jnp.float64 else "float32"]


def reference_solve(
    denoiser,
    schedule: NoiseSchedule,
    x_T,
    ts,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    return_evaluations: bool = False,
):
    """Solve the PF-ODE from ``x_T`` at ``ts[0]`` and return the states at every ``ts``.

    Uses ``diffrax.Dopri8`` with a PID step-size controller, in ``x_T``'s dtype
    (bfloat16 and float16 states are solved in float32). Run it in float64
    (``jax.config.update("jax_enable_x64", True)``) for reference accuracy; in
    float32 it is the teacher of models that have no float64 (its error against the
    float64 solve is measured in ``benchmarks/teacher.py``).

    Args:
        denoiser: ``D(x, t) -> x0_hat``.
        schedule: the noise schedule that defines ``alpha``, ``sigma``, ``lam``.
        x_T: initial state at ``ts[0]``.
        ts: strictly decreasing times (noise to data); a final time with
            ``sigma = 0`` is handled as the limit.
        rtol, atol: the step-size controller's tolerances; by default
            :func:`reference_tolerance` of the dtype (1e-10 in float64, 1e-5 below).

    Returns:
        ``[len(ts), *x_T.shape]`` array of states; with ``return_evaluations``
        also the number of denoiser calls (each on the whole batch ``x_T``: the batch
        is one ODE with one step-size control).
    """
    dtype = solve_dtype(jnp.asarray(x_T).dtype)
    x_T = jnp.asarray(x_T, dtype)
    rtol = reference_tolerance(dtype) if rtol is None else rtol
    atol = rtol if atol is None else atol
    ts = jnp.asarray(ts, dtype)
    lams = jnp.minimum(schedule.lam(ts), LAM_CAP)
    alphas = schedule.alpha(ts)

    def vf(lam, y, args):
        t = schedule.t_of_lam(lam)
        # a bfloat16 network's output joins the float32 state
        return (denoiser(schedule.alpha(t) * y, t) - y).astype(y.dtype)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        t0=lams[0],
        t1=lams[-1],
        dt0=None,
        y0=x_T / alphas[0],
        saveat=diffrax.SaveAt(ts=lams),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, dtmin=None),
        max_steps=max_steps,
    )
    expand = (...,) + (None,) * jnp.ndim(x_T)
    ys = sol.ys * alphas[expand]
    if return_evaluations:
        return ys, DOPRI8_EVALS_PER_STEP * sol.stats["num_steps"] + 1
    return ys

