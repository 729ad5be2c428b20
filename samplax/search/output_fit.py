"""Per-coordinate output combination: the last, closed-form phase of the search.

A deterministic plan's output is ``final.x x + sum_h final.d[h] D[h] + sum_h
final.e[h] E[h]``, a fixed linear combination of the anchor ``x`` and the buffered
data and noise predictions after the last evaluation (:mod:`samplax.solvers.plan`).
Given those, giving every coordinate of the sample its own weights and an additive
offset ``c`` is a linear model per coordinate ``f``::

    out[n, f] = sum_b W[f, b] B[n, f, b] (+ c[f])        B: the P = 1 + Hd + He bases

so the best such output is a weighted least-squares problem per coordinate with an
exact solution, and the network is evaluated once. Per-coordinate coefficients and
an offset are what DPM-Solver-v3 (Zheng et al. 2023, "DPM-Solver-v3: Improved
Diffusion ODE Solver with Empirical Model Statistics": its ``l``, ``s``, ``b``;
:mod:`samplax.solvers.dpm_solver_v3`) computes from model statistics; here they
are fitted to the teacher instead, only at the output, where the coordinates do not
interact (in the basis of the plan if it has one,
:mod:`samplax.search.basis`). For a robust
objective ``mean_n rho(rmse_n)`` (:data:`samplax.search.objective.LOSSES`) the
samples are reweighted by ``rho'(s_n)/s_n`` and the fit repeated (iteratively
reweighted least squares, Holland & Welsch 1977); for a concave ``rho`` of the MSE
(``log``, ``sqrt``) each round is a majorize-minimize step, so the objective falls.

The fit has ``P + 1`` unknowns per coordinate; the calibration noises decide
whether it generalizes: a two-fold cross-check inside the calibration set (fit on
one half, score on the other, and back) must beat the scalar output, else the plan
is returned unchanged. Measured (held-out median RMSE, 256 calibration noises, after
the Levenberg-Marquardt phase): digits NFE 5 0.0134 -> 0.0115, gmm64 NFE 5 0.00120
-> 0.00109 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import per_sample_rmse
from samplax.search.basis import BASES, MAX_DIM, coordinate_shape, start_in
from samplax.search.objective import check_loss
from samplax.solvers.executor import sample
from samplax.solvers.plan import Combo, Plan


def output_bases(denoiser, plan: Plan, x) -> jax.Array:
    """``[n, *F, P]``: the sample's derivative in each scalar output coefficient
    (anchor, then the data buffer, then the noise buffer), i.e. the bases the output
    combines. One forward pass: the output is linear in ``plan.final``."""
    f = plan.final
    flat = jnp.concatenate([f.x.reshape(1), f.d, f.e])
    hd = f.d.shape[0]

    def out(w):
        return sample(denoiser, plan._replace(final=Combo(w[0], w[1:1 + hd], w[1 + hd:],
                                                          None)), x)

    return jax.jacfwd(out)(flat)


def _check(plan: Plan, x) -> None:
    f = plan.final
    if plan.stochastic:
        raise ValueError("the output fit needs a deterministic plan (no noise slots)")
    if f.c is not None or f.x.ndim != 0 or f.d.ndim != 1 or f.e.ndim != 1:
        raise ValueError("the output fit starts from scalar output coefficients "
                         "(this plan's output is per-coordinate already)")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of samples [n, ...], got shape {x.shape}")


def _solve(B, r, w, ridge):
    """Per coordinate, ``argmin_v sum_n w_n (B[n, f] . v - r[n, f])^2`` with a ridge
    relative to the normal matrix's diagonal (a basis that vanishes at a coordinate,
    e.g. a noise prediction at sigma = 0, gets weight 0 there)."""
    A = jnp.einsum("n,nfb,nfc->fbc", w, B, B)
    d = jnp.einsum("fbb->fb", A)
    # the floor keeps collinear bases (e.g. DDIM's anchor and buffers) solvable
    d = ridge * d + 1e-12 * jnp.max(d) + jnp.finfo(A.dtype).tiny
    A = A + d[..., None] * jnp.eye(A.shape[-1], dtype=A.dtype)
    g = jnp.einsum("n,nfb,nf->fb", w, B, r)
    return jnp.linalg.solve(A, g[..., None])[..., 0]


def _irls(B, r, rho, iters, ridge):
    """Weighted least squares of ``r`` on ``B`` (``[n, F, P]``, ``[n, F]``) for
    ``mean rho(rmse)``; returns ``[F, P]`` (zeros: the scalar output)."""
    drho = jax.vmap(jax.grad(rho))
    v = jnp.zeros(B.shape[1:], B.dtype)
    for _ in range(iters):
        s = per_sample_rmse(jnp.einsum("nfb,fb->nf", B, v) - r, 0.0)
        w = jnp.where(s > 0, drho(s) / jnp.where(s > 0, s, 1.0), 0.0)
        v = _solve(B, r, w / jnp.sum(w), ridge)
    return v


def fit_output(denoiser, plan: Plan, x, ref, *, loss: str = "log_rmse", offset: bool = True,
               iters: int = 8, ridge: float = 1e-6) -> tuple[Plan, float, float, bool]:
    """Fit per-coordinate output weights (and an offset) of ``plan`` to a teacher.

    Args:
        denoiser: the model.
        plan: a deterministic plan with scalar output coefficients.
        x, ref: calibration noises ``[n, *F]`` and the teacher's samples for them.
        loss: the objective, a name in :data:`samplax.search.objective.LOSSES`.
        offset: also fit an additive per-coordinate constant ``final.c``.
        iters: reweighting rounds (1 is plain least squares, right for an MSE).
        ridge: Tikhonov damping relative to each normal matrix's diagonal.

    Returns:
        ``(plan, loss before, loss after, applied)``: the plan with ``final.x``
        ``[*F]``, ``final.d`` ``[Hd, *F]``, ``final.e`` ``[He, *F]`` (and ``final.c``)
        if the two-fold cross-check within ``(x, ref)`` preferred it
        (``applied``), else ``plan`` itself; losses on all of ``(x, ref)``.
    """
    x, ref = jnp.asarray(x), jnp.asarray(ref)
    _check(plan, x)
    if x.shape != ref.shape:
        raise ValueError(f"x {x.shape} and ref {ref.shape} differ in shape")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    rho = check_loss(loss)
    n, feat = x.shape[0], coordinate_shape(plan, x.shape[1:])
    B = output_bases(denoiser, plan, x).reshape(n, -1, plan.final.d.shape[0]
                                                + plan.final.e.shape[0] + 1)
    ref = ref.reshape(n, -1)
    if plan.basis is not None:  # the weights act on the basis's coordinates
        U = jnp.asarray(plan.basis, B.dtype)
        B, ref = jnp.einsum("nfb,fg->ngb", B, U), ref @ U
    if offset:
        B = jnp.concatenate([B, jnp.ones(B.shape[:2] + (1,), B.dtype)], axis=-1)
    f = plan.final
    v0 = jnp.concatenate([f.x.reshape(1), f.d, f.e] + ([jnp.zeros(1, B.dtype)] if offset
                                                        else []))
    base = jnp.einsum("nfb,b->nf", B, v0.astype(B.dtype))
    r = ref.reshape(n, -1) - base
    objective = lambda v, idx: float(jnp.mean(rho(per_sample_rmse(  # noqa: E731
        jnp.einsum("nfb,fb->nf", B[idx], v) - r[idx], 0.0))))
    fit = jax.jit(lambda Bi, ri: _irls(Bi, ri, rho, iters, ridge))
    zero = jnp.zeros(B.shape[1:], B.dtype)
    halves = (np.arange(0, n, 2), np.arange(1, n, 2))
    cross = scalar = 0.0
    for a, b in (halves, halves[::-1]):
        cross += objective(fit(B[a], r[a]), b)
        scalar += objective(zero, b)
    everyone = np.arange(n)
    before = objective(zero, everyone)
    if n < 4 or not np.isfinite(cross) or cross >= scalar:
        return plan, before, before, False
    v = fit(B, r)
    after = objective(v, everyone)
    if not np.isfinite(after) or after >= before:
        return plan, before, before, False
    w = (v + v0[None].astype(v.dtype)).T.reshape((-1,) + feat)  # [P(+1), *F]
    hd, he = f.d.shape[0], f.e.shape[0]
    final = Combo(w[0], w[1:1 + hd], w[1 + hd:1 + hd + he], None,
                  w[-1] if offset else None)
    return plan._replace(final=final), before, after, True


def fit_output_in(denoiser, plan: Plan, teacher, *, basis: str = "auto",
                  loss: str = "log_rmse", max_dim: int = MAX_DIM) -> tuple[Plan, dict]:
    """:func:`fit_output` on the teacher's calibration noises, in the coordinates
    ``basis`` (:data:`samplax.search.basis.BASES`).

    With ``"auto"`` the fit is done in the principal components and in the sample's
    own coordinates, and the principal components are kept unless the other fit ends
    strictly lower on the calibration objective: the closed-form fit costs one pass
    of the network, and it is the cheap probe of which coordinates suit
    per-coordinate coefficients for this model (benchmarks/RESULTS.md: on the digits
    model it chose, at each of NFE 4-10, the basis whose full fit was better held
    out).

    Returns:
        ``(plan, record)``, the record with ``applied``, ``loss_before``, ``loss``,
        ``basis`` (the one used: ``"none"`` also where ``"pca"`` builds no basis, for
        samples over ``max_dim`` entries or per-coordinate coefficients) and, for
        ``"auto"``, ``loss_by_basis``.
    """
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; choose one of {list(BASES)}")
    starts = {b: start_in(plan, teacher, b, max_dim)
              for b in (("pca", "none") if basis == "auto" else (basis,))}
    if basis == "auto" and starts["pca"] is plan:  # nothing to compare
        starts = {"pca" if plan.basis is not None else "none": plan}
    tried = tuple(starts)
    fits = {b: fit_output(denoiser, starts[b], teacher.x_cal, teacher.ref_cal, loss=loss)
            for b in tried}
    chosen = min(tried, key=lambda b: fits[b][2])  # ties keep the first: "pca"
    fitted, before, after, applied = fits[chosen]
    # each basis tried is one pass of the calibration noises through the plan
    rec = {"applied": applied, "loss_before": before, "loss": after, "basis": chosen,
           "passes": len(tried)}
    if basis == "auto":
        rec["loss_by_basis"] = {b: fits[b][2] for b in tried}
    return fitted, rec


__all__ = ["fit_output", "fit_output_in", "output_bases"]
