"""The coordinates a per-coordinate plan fit works in: the data's principal components.

The per-coordinate phases (:mod:`samplax.search.output_fit`,
:mod:`samplax.search.coordinate_fit`) give each coordinate its own coefficients,
so the coordinates matter. For Gaussian data ``N(mu, U diag(s) U^T)`` the
probability-flow ODE decouples along the columns of ``U``: each principal
component follows its own scalar linear ODE, whose exact solver has one
coefficient per step, so coefficients per principal component can be exact
where coefficients per pixel cannot (the pixels are mixed by ``U``). DPM-Solver-v3
(Zheng et al. 2023, Eq. 9-10) works per pixel; here the search fits its
per-coordinate coefficients in the principal components of the teacher's samples,
which are the model's own data distribution, and the plan carries that basis
(:attr:`samplax.solvers.plan.Plan.basis`).

Neither coordinate system wins everywhere (benchmarks/RESULTS.md, held-out median
RMSE of the full search): the principal components are better on the 64-d Gaussian
mixture at every NFE from 4 to 10 (e.g. NFE 5: 0.000975 vs 0.00103) and on the
digits model at NFE 6 and 8 (0.00245 vs 0.00256), the pixels on digits at NFE 4, 5
and 10 (0.0188 vs 0.0197 at NFE 4). So by default (``"auto"``) the closed-form output
fit, which costs one pass of the network, is done in both, and the coordinates where
it ends lower on the calibration objective are kept for both fits: that picked the
better coordinates in 9 of those 10 cases (on gmm64 at NFE 10 the pixels, 7.7e-5
against 7.5e-5). Also measured on digits at NFE 8 and not offered: the principal
components of the per-sample errors (0.00259) and the 2-D DCT basis (0.00271).

The basis is an ``n x n`` matrix, so it is built only for samples of at most
:data:`MAX_DIM` entries (the phases' ``max_dim``); larger samples keep
their own coordinates.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from samplax.solvers.plan import Plan

#: the coordinates a per-coordinate fit may use (the phases' ``basis``): "pca", the
#: principal components of the teacher's samples; "none", the sample's own; "auto",
#: whichever of the two the closed-form output fit does better in
BASES = ("auto", "pca", "none")

#: the largest sample (entries) for which the search builds a basis by default: a
#: 4096 x 4096 matrix is 128 MiB in float64 and its eigendecomposition seconds.
MAX_DIM = 4096


def pca_basis(samples) -> np.ndarray:
    """``[n, n]`` orthogonal matrix whose columns are the principal directions of
    ``samples`` ``[m, *F]`` (``n = prod(F)``), by decreasing variance, each signed
    so that its largest entry is positive (the same samples give the same basis)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"pca_basis needs a batch of at least 2 samples [m, ...], got "
                         f"shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("pca_basis: the samples contain non-finite values")
    a = a.reshape(a.shape[0], -1)
    a = a - a.mean(axis=0)
    _, u = np.linalg.eigh(a.T @ a / (a.shape[0] - 1))
    u = u[:, ::-1]
    top = u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])]
    return u * np.where(top < 0, -1.0, 1.0)


def check_basis(basis) -> str | None:
    """What is wrong with ``basis`` as a :attr:`Plan.basis` (a square orthogonal
    matrix), or ``None``."""
    b = np.asarray(basis, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        return f"a basis must be a square matrix, got shape {b.shape}"
    err = float(np.max(np.abs(b.T @ b - np.eye(b.shape[0]))))
    if not err < 1e-6:
        return f"a basis must be orthogonal (max |B^T B - I| = {err:.2g})"
    return None


def with_basis(plan: Plan, basis) -> Plan:
    """``plan``, to be run on the coordinates of ``basis`` (:attr:`Plan.basis`).

    Only for plans with scalar coefficients, whose samples are the same in any
    basis; per-coordinate coefficients belong to the coordinates they were fitted
    in."""
    problem = check_basis(basis)
    if problem:
        raise ValueError(problem)
    b = jnp.asarray(basis)
    for name, lead in (("evaluate", 1), ("update", 1), ("final", 0)):
        if jnp.ndim(getattr(plan, name).x) > lead or getattr(plan, name).c is not None:
            raise ValueError(f"the plan's {name} coefficients are per-coordinate already; "
                             "a basis can only be given to a plan with scalar ones")
    return plan._replace(basis=b)


def pca_start(plan: Plan, teacher, max_dim: int = MAX_DIM) -> Plan:
    """``plan`` in the principal components of the teacher's calibration and fitting
    samples (never the held-out ones), where a per-coordinate fit should start; the
    plan itself if it has a basis or per-coordinate coefficients already, or if its
    samples have more than ``max_dim`` entries."""
    size = int(np.prod(np.shape(teacher.ref_cal)[1:]))
    scalar = all(jnp.ndim(getattr(plan, n).x) == lead and getattr(plan, n).c is None
                 for n, lead in (("evaluate", 1), ("update", 1), ("final", 0)))
    if plan.basis is not None or not scalar or size > max_dim:
        return plan
    refs = [teacher.ref_cal] + ([] if teacher.ref_fit is None else [teacher.ref_fit])
    return with_basis(plan, pca_basis(np.concatenate([np.asarray(r) for r in refs])))


def start_in(plan: Plan, teacher, basis: str, max_dim: int = MAX_DIM) -> Plan:
    """``plan`` ready for a per-coordinate fit in ``basis``, ``"pca"`` or ``"none"``
    (``"auto"`` is resolved by :func:`samplax.search.output_fit.fit_output_in`)."""
    if basis == "pca":
        return pca_start(plan, teacher, max_dim)
    if basis == "none":
        return plan
    raise ValueError(f"unknown basis {basis!r}; choose one of {list(BASES[1:])} here")


def resolved(basis: str, output_fit: dict | None) -> str:
    """The basis a fit after the output fit uses: ``basis`` itself, or for
    ``"auto"`` the one the output fit chose (its record's ``"basis"``), else
    ``"pca"``."""
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; choose one of {list(BASES)}")
    if basis != "auto":
        return basis
    return (output_fit or {}).get("basis", "pca")


def coordinate_shape(plan: Plan, sample_shape) -> tuple[int, ...]:
    """The trailing shape of per-coordinate coefficients of ``plan`` for samples of
    trailing shape ``sample_shape``: ``(n,)`` with a basis, else the sample's."""
    if plan.basis is None:
        return tuple(sample_shape)
    return (int(np.shape(plan.basis)[0]),)


__all__ = ["BASES", "MAX_DIM", "check_basis", "coordinate_shape", "pca_basis",
           "pca_start", "resolved", "start_in", "with_basis"]
