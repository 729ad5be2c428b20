"""DPM-Solver-v3 (Zheng, Lu, Bao & Zhu 2023): an ODE solver with empirical model statistics.

Zheng et al., "DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical Model
Statistics", NeurIPS 2023 (arXiv:2310.13268); official code ``thu-ml/DPM-Solver-v3``.
In DESIGN notation the probability-flow ODE in ``lam`` is
``dx/dlam = (d log alpha/dlam) x - sigma eps_hat``. Three *empirical model
statistics* (EMS), per coordinate and per ``lam``, rewrite it::

    f(x, lam)   = (sigma eps_hat - l x)/alpha                         (l: linear part)
    g_s(x, lam) = e^{-(S(lam) - S_s)} f - B_s(lam),
    B_s(lam)    = int_{lam_s}^{lam} e^{-(S(r) - S_s)} b(r) dr,           S = int s, L = int l,
    x_t = (alpha_t/alpha_s) e^{-(L_t - L_s)} x_s
          - alpha_t int_{lam_s}^{lam_t} e^{-(L_t - L(lam)) + (S(lam) - S_s)} (g_s + B_s) dlam,

The statistics make ``g`` as flat in ``lam`` as possible:
``l`` minimizes ``E ||grad_x (sigma eps - l x)||_F^2`` (``l`` = the mean diagonal
of ``sigma d eps/dx``, estimated with Rademacher probes), and ``s``, ``b``
are the least-squares fit ``f' ~ s f + b`` of the total ``lam``-derivative of
``f`` along the ODE. The solver interpolates ``g_s`` through the model
outputs (Lagrange in ``lam``, the predictor through ``t_i`` and earlier times, the
corrector adding the new output at ``t_{i+1}``, UniC-style, free of NFE) and
integrates exactly against the weight.

Representation here: the statistics live on a ``lam`` grid and are piecewise
linear between its nodes (:class:`EMS`); the integrals are taken with
Gauss-Legendre quadrature on pieces of the grid (the official code uses the
trapezoidal rule on its grid and snaps the times to it; samplax does neither).
Because ``f_j = ((1 - l_j) sigma_j eps_j - l_j alpha_j x0_j)/alpha_j`` with the
evaluation point ``x_j = sigma_j eps_j + alpha_j x0_j``, every step is linear in
the data and noise buffers with *per-coordinate* coefficients plus a constant
(from ``b``): a plan like any other (:class:`~samplax.solvers.plan.Combo`'s feature
axes and ``c``). With ``l = 1``, ``s = b = 0`` (:meth:`EMS.degenerate`) ``f = -x0_hat``
and the solver is DPM-Solver++ with exact Lagrange weights:
``usf(Step("data", p, corrector))``, e.g. ``dpm_solver_pp(order=2,
solver_type="heun")`` / 3M ``'exact'`` without corrector. Not implemented: the
official "pseudo-order" variants (divided differences in place of the
Vandermonde solve) and stepping to ``sigma = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers._common import check_timesteps, is_concrete, reaches_zero_noise
from samplax.solvers.plan import Lin, Plan, PlanBuilder, constant

_GL_POINTS = 12
_MAX_PIECE = 0.25  # widest quadrature piece in lam


class EMS(NamedTuple):
    """Empirical model statistics on a grid of ``lam`` (increasing), piecewise linear.

    Attributes:
        lam: ``[K + 1]`` half log-SNR nodes, increasing (from noise to data).
        l, s, b: ``[K + 1, *F]`` values at the nodes, ``F`` the shape of one sample.
    """

    lam: jax.Array
    l: jax.Array  # noqa: E741
    s: jax.Array
    b: jax.Array

    @classmethod
    def degenerate(cls, lam, shape) -> EMS:
        """``l = 1``, ``s = b = 0``: DPM-Solver-v3 becomes DPM-Solver++ (data prediction)."""
        lam = jnp.asarray(lam)
        full = (lam.shape[0],) + tuple(shape)
        return cls(lam, jnp.ones(full, lam.dtype), jnp.zeros(full, lam.dtype),
                   jnp.zeros(full, lam.dtype))

    def save(self, path) -> None:
        """Store as ``.npz`` (keys ``lam``, ``l``, ``s``, ``b``)."""
        np.savez(path, lam=np.asarray(self.lam), l=np.asarray(self.l), s=np.asarray(self.s),
                 b=np.asarray(self.b))

    @classmethod
    def load(cls, path) -> EMS:
        """Load statistics saved by :meth:`save`."""
        with np.load(path) as z:
            return cls(*(jnp.asarray(z[k]) for k in ("lam", "l", "s", "b")))


# --------------------------------------------------------------------------------------
# Piecewise-linear statistics: values, integrals, quadrature
# --------------------------------------------------------------------------------------


class _Stats:
    """Cumulative integrals of the statistics at the grid nodes, and evaluation anywhere.

    Plain NumPy in float64: the statistics and the (concrete) times are data, and
    the quadrature's shapes change from step to step (eager ``jnp`` would compile
    every operation anew for each).
    """

    def __init__(self, ems: EMS):
        self.lam = np.asarray(ems.lam, dtype=np.float64)
        if self.lam.ndim != 1 or self.lam.shape[0] < 2 or not np.all(np.diff(self.lam) > 0):
            raise ValueError("EMS.lam must be a strictly increasing 1-D grid of >= 2 nodes")
        for name in ("l", "s", "b"):
            if np.shape(getattr(ems, name))[0] != self.lam.shape[0]:
                raise ValueError(f"EMS.{name} needs one row per lam node")
        self.l, self.s, self.b = (np.asarray(v, dtype=np.float64) for v in (ems.l, ems.s, ems.b))
        dl = np.diff(self.lam).reshape((-1,) + (1,) * (self.l.ndim - 1))
        self.Lc = _cum(0.5 * dl * (self.l[1:] + self.l[:-1]))
        self.Sc = _cum(0.5 * dl * (self.s[1:] + self.s[:-1]))
        k = np.arange(self.lam.shape[0] - 1)
        self.Bc = _cum(self._inner_b(k, self.lam[1:]))

    def cell(self, q):
        q = np.asarray(q, dtype=np.float64)
        return np.clip(np.searchsorted(self.lam, q, side="right") - 1, 0, self.lam.shape[0] - 2)

    def _parts(self, k, q):
        lo = self.lam[k]
        shape = (-1,) + (1,) * (self.l.ndim - 1)
        u = (np.asarray(q, dtype=np.float64) - lo).reshape(shape)
        return u, (self.lam[k + 1] - lo).reshape(shape)

    def value(self, v, k, q):
        u, w = self._parts(k, q)
        return v[k] + (v[k + 1] - v[k]) * u / w

    def integral(self, v, vc, k, q):
        u, w = self._parts(k, q)
        return vc[k] + v[k] * u + (v[k + 1] - v[k]) * u**2 / (2.0 * w)

    def L(self, k, q):
        return self.integral(self.l, self.Lc, k, q)

    def S(self, k, q):
        return self.integral(self.s, self.Sc, k, q)

    def _inner_b(self, k, q):
        """``int_{lam_k}^{q} e^{-S(r)} b(r) dr`` within cell ``k`` (Gauss-Legendre)."""
        x, w = np.polynomial.legendre.leggauss(_GL_POINTS)
        k = np.atleast_1d(k)
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        lo = self.lam[k]
        half = (q - lo) / 2.0
        rr = (lo[:, None] + half[:, None] * (x[None, :] + 1.0)).reshape(-1)
        kk = np.repeat(k, _GL_POINTS)
        f = np.exp(-self.S(kk, rr)) * self.value(self.b, kk, rr)
        f = f.reshape((len(q), _GL_POINTS) + f.shape[1:])
        wts = half[:, None] * w[None, :]
        return np.sum(f * wts.reshape(wts.shape + (1,) * (f.ndim - 2)), axis=1)

    def B(self, k, q):
        return self.Bc[np.atleast_1d(k)] + self._inner_b(k, q)


def _cum(v):
    return np.concatenate([np.zeros_like(v[:1]), np.cumsum(v, axis=0)], axis=0)


def _quadrature(grid, a: float, b: float):
    """Gauss-Legendre nodes and weights on ``[a, b]`` split at the grid nodes and into
    pieces no wider than ``_MAX_PIECE``."""
    cuts = [a] + [g for g in grid if a < g < b] + [b]
    x, w = np.polynomial.legendre.leggauss(_GL_POINTS)
    qs, ws = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        m = max(1, int(np.ceil((hi - lo) / _MAX_PIECE)))
        edges = np.linspace(lo, hi, m + 1)
        for e0, e1 in zip(edges[:-1], edges[1:]):
            qs.append(0.5 * (e1 - e0) * x + 0.5 * (e1 + e0))
            ws.append(0.5 * (e1 - e0) * w)
    return np.concatenate(qs), np.concatenate(ws)


def _lagrange_basis(nodes: list[float], q):
    """``[J, M]`` Lagrange basis polynomials of the scalar ``nodes`` at the points ``q``."""
    out = []
    for j, nj in enumerate(nodes):
        v = np.ones_like(q)
        for m, nm in enumerate(nodes):
            if m != j:
                v = v * (q - nm) / (nj - nm)
        out.append(v)
    return np.stack(out)


def _step(st: _Stats, schedule, s, t, node_lams: list[float]):
    """Coefficients of one step ``s -> t`` through the outputs at ``node_lams``.

    Returns ``A`` (anchor weight), per-node ``G_j`` (weights of ``f_j``), and the
    constant, NumPy arrays of the sample's shape (module docstring).
    """
    lam_s, lam_t = float(schedule.lam(s)), float(schedule.lam(t))
    q, w = _quadrature(st.lam, lam_s, lam_t)
    kq = st.cell(q)
    pts = np.array([lam_s, lam_t] + list(node_lams))
    kp = st.cell(pts)
    Lp, Sp, Bp = st.L(kp, pts), st.S(kp, pts), st.B(kp, pts)
    Ls, Lt, Ss, Bs0 = Lp[0], Lp[1], Sp[0], Bp[0]
    Eq = np.exp(-(Lt - st.L(kq, q)) + (st.S(kq, q) - Ss))  # [M, *F]
    wq = w.reshape((-1,) + (1,) * (Eq.ndim - 1))
    W = np.tensordot(_lagrange_basis(list(node_lams), q), wq * Eq, axes=1)  # [J, *F]
    Cb = np.sum(wq * Eq * np.exp(Ss) * (st.B(kq, q) - Bs0), axis=0)
    Bs_nodes = np.exp(Ss) * (Bp[2:] - Bs0)
    G = W * np.exp(-(Sp[2:] - Ss))
    alpha_t = float(schedule.alpha(t))
    A = alpha_t / float(schedule.alpha(s)) * np.exp(-(Lt - Ls))
    const = -alpha_t * (Cb - np.sum(W * Bs_nodes, axis=0))
    return A, G, const


def _f(out, lam_j, l_j) -> Lin:
    """``f_j = (sigma eps - l x)/alpha = (1 - l_j) e^{-lam_j} eps_j - l_j x0_j`` at the
    evaluation point of output ``j``."""
    return out.e * ((1.0 - l_j) * np.exp(-lam_j)) - out.d * l_j


def dpm_solver_v3(
    schedule,
    timesteps,
    ems: EMS,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
) -> Plan:
    """DPM-Solver-v3 (Zheng et al. 2023) with statistics ``ems`` as a plan (module docstring).

    Args:
        schedule: the noise schedule.
        timesteps: strictly decreasing concrete times inside the statistics' ``lam``
            range, ending at ``sigma > 0`` (finish with a final denoise if needed).
        ems: the statistics (:func:`compute_ems`, :meth:`EMS.load`, :meth:`EMS.degenerate`).
        order: predictor order ``p`` (1..4); warm-up ``1, 2, ..``.
        corrector: correct each step but the last with the new output (order ``p + 1``,
            no extra NFE).
        lower_order_final: orders ``min(p, steps left)`` at the end (official code).

    NFE = ``len(timesteps) - 1``. Coefficients are per coordinate (shape of one sample).
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an integer in 1..4, got {order!r}")
    ts = check_timesteps(schedule, timesteps)
    if not is_concrete(ts):
        raise ValueError("dpm_solver_v3 needs concrete times (its quadrature is planned on them)")
    if reaches_zero_noise(schedule, ts[-1]):
        raise ValueError("dpm_solver_v3 cannot step to sigma = 0; end at t_min > 0")
    st = _Stats(ems)
    lam = [float(v) for v in np.asarray(schedule.lam(ts))]
    tol = 1e-6 * (1.0 + abs(st.lam[-1] - st.lam[0]))
    if lam[0] < st.lam[0] - tol or lam[-1] > st.lam[-1] + tol:
        raise ValueError(
            f"timesteps span lam [{lam[0]:.4g}, {lam[-1]:.4g}] outside the statistics' grid "
            f"[{st.lam[0]:.4g}, {st.lam[-1]:.4g}]"
        )
    n = len(lam) - 1
    times = list(ts)
    b = PlanBuilder(schedule)
    outs, f_hist = [], []

    def add_output(out, j):
        l_j = st.value(st.l, st.cell([lam[j]]), [lam[j]])[0]  # [*F]
        outs.append(out)
        f_hist.append(_f(out, lam[j], l_j))

    add_output(b.evaluate(b.x, times[0]), 0)
    for i in range(n):
        k = min(order, i + 1)
        if lower_order_final:
            k = min(k, n - i)
        nodes = [lam[i - j] for j in range(k)]
        A, G, const = _step(st, schedule, times[i], times[i + 1], nodes)
        a_t = float(schedule.alpha(times[i + 1]))
        # (Lin on the left of NumPy coefficients: ndarray * Lin would map elementwise)
        pred = b.x * A - _lin(G, f_hist[::-1][:k]) * a_t + constant(const)
        if i == n - 1:
            b.set_x(pred)
            break
        new = b.evaluate(pred, times[i + 1])
        add_output(new, i + 1)
        if corrector:
            c_nodes = [lam[i + 1]] + nodes
            A, G, const = _step(st, schedule, times[i], times[i + 1], c_nodes)
            fs = [f_hist[-1]] + f_hist[::-1][1:k + 1]
            b.set_x(b.x * A - _lin(G, fs) * a_t + constant(const))
        else:
            b.set_x(pred)
    return b.build()


def _lin(G, fs) -> Lin:
    out = Lin()
    for j, f in enumerate(fs):
        out = out + f * G[j]
    return out


# --------------------------------------------------------------------------------------
# Computing the statistics
# --------------------------------------------------------------------------------------


def compute_ems(
    denoiser,
    schedule,
    x_T,
    *,
    n_grid: int = 100,
    t_start=None,
    t_end=None,
    n_probes: int = 4,
    key=None,
    trajectory=None,
) -> EMS:
    """Estimate DPM-Solver-v3's statistics from samples (the paper's EMS).

    The states ``x_lam`` at the ``n_grid + 1`` logSNR-uniform nodes from ``t_start``
    (default ``schedule.t_max``) to ``t_end`` (``schedule.t_min``) are the
    probability-flow trajectories of ``x_T`` (``[n, *F]``, e.g. ~1k noise samples),
    computed with a third-order multistep exponential integrator on the grid, or
    given as ``trajectory`` (``[n_grid + 1, n, *F]``). At each node:

    * ``l = E[diag(sigma d eps/dx)] = 1 - alpha E[diag(dD/dx)]``, the
      diagonal estimated as ``E[v * (J v)]`` over ``n_probes`` Rademacher ``v``
      per sample (JVPs of the denoiser);
    * ``f = (1 - l) x/alpha - x0_hat`` and its total derivative along the ODE
      ``f' = -l' x/alpha + (1 - l)(x'/alpha - x alpha'/alpha^2) - dD/dlam`` with
      ``x' = dx/dlam = alpha' x_tilde + alpha (x0_hat - x_tilde)`` (JVP in ``(x, lam)``;
      ``l'`` by central differences on the grid);
    * ``s, b`` = the per-coordinate least-squares fit ``f' ~ s f + b``.

    Returns:
        :class:`EMS` on the grid (store it with :meth:`EMS.save`).
    """
    from samplax.solvers.executor import sample
    from samplax.solvers.usf import Step, usf

    x_T = jnp.asarray(x_T)
    t0 = schedule.t_max if t_start is None else t_start
    t1 = schedule.t_min if t_end is None else t_end
    lam_grid = jnp.linspace(schedule.lam(jnp.asarray(t0, float)),
                            schedule.lam(jnp.asarray(t1, float)), n_grid + 1)
    ts = schedule.t_of_lam(lam_grid).at[0].set(t0).at[-1].set(t1)
    lam_grid = schedule.lam(ts)
    if trajectory is None:
        plan = usf(schedule, ts, Step("data", 3))
        _, traj = jax.jit(sample, static_argnums=0, static_argnames="return_trajectory")(
            denoiser, plan, x_T, return_trajectory=True)
        trajectory = jnp.concatenate([x_T[None], traj], axis=0)
    key = jax.random.key(0) if key is None else key

    def alpha_of_lam(lam):
        return schedule.alpha(schedule.t_of_lam(lam))

    def l_at(args):
        x, lam, k = args
        t = schedule.t_of_lam(lam)
        a = schedule.alpha(t)
        D = lambda y: denoiser(y, t)
        acc = jnp.zeros(x.shape[1:], x.dtype)
        for p in range(n_probes):
            v = jax.random.rademacher(jax.random.fold_in(k, p), x.shape, x.dtype)
            _, jv = jax.jvp(D, (x,), (v,))
            acc = acc + jnp.mean(v * jv, axis=0)
        return 1.0 - a * acc / n_probes

    keys = jax.random.split(key, n_grid + 1)
    l_nodes = jax.lax.map(l_at, (trajectory, lam_grid, keys))
    dl = jnp.gradient(l_nodes, lam_grid, axis=0)

    def sb_at(args):
        x, lam, l, lp = args
        t = schedule.t_of_lam(lam)
        a, ap = jax.jvp(alpha_of_lam, (lam,), (jnp.ones_like(lam),))
        d0 = denoiser(x, t)
        xt = x / a
        xp = ap * xt + a * (d0 - xt)
        _, dD = jax.jvp(lambda y, u: denoiser(y, schedule.t_of_lam(u)), (x, lam),
                        (xp, jnp.ones_like(lam)))
        f = (1.0 - l) * x / a - d0
        fp = -lp * x / a + (1.0 - l) * (xp / a - x * ap / a**2) - dD
        fm, fpm = jnp.mean(f, 0), jnp.mean(fp, 0)
        cov = jnp.mean((f - fm) * (fp - fpm), 0)
        var = jnp.mean((f - fm) ** 2, 0)
        s = jnp.where(var > 0, cov / jnp.where(var > 0, var, 1.0), 0.0)
        return s, fpm - s * fm

    s_nodes, b_nodes = jax.lax.map(sb_at, (trajectory, lam_grid, l_nodes, dl))
    return EMS(lam_grid, l_nodes, s_nodes, b_nodes)


__all__ = ["EMS", "compute_ems", "dpm_solver_v3"]
