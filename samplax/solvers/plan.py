"""Plans: every solver compiled to arrays of coefficients.

A plan drives the one executor (:func:`samplax.sample`). The executor keeps an
*anchor* ``x`` (initially ``x_T``) and two ring buffers holding the last
``Hd`` data predictions ``D_j = x0_hat`` and the last ``He`` noise predictions
``E_j = eps_hat``. NFE slot ``k`` does, with the same arithmetic every step::

    z      ~ N(0, I)                                   (only if the plan is stochastic)
    x_eval = eval.x[k] x + sum_h eval.d[k,h] D[h] + sum_h eval.e[k,h] E[h] + eval.z[k] z
    D[k % Hd], E[k % He] = denoiser(x_eval, t[k]), (x_eval - alpha[k] D)/sigma[k]
    x      = update.x[k] x + sum_h update.d[k,h] D[h] + ... + update.z[k] z

and the output is ``final.x x + final.d . D + final.e . E + final.z z``.
Buffers are indexed by physical position ``j mod H`` so one slot writes one
entry instead of shifting the whole buffer.

Solvers never touch these arrays by hand: they write their update formulas
with :class:`Lin` expressions on a :class:`PlanBuilder`, which resolves output
indices to buffer positions, sizes the buffers and stacks the coefficients.
Coefficients are ``jnp`` scalars, so a plan is differentiable in its times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


class Combo(NamedTuple):
    """Coefficients of one linear combination (or a stack of them, leading axis K).

    ``x``: anchor weight; ``d``: weights of the data-prediction buffer (axis Hd);
    ``e``: weights of the noise-prediction buffer (axis He); ``z``: weight of the
    slot's fresh Gaussian noise, or ``None`` for a deterministic plan; ``c``: an
    additive constant (a sample-shaped offset), or ``None`` (no plan but those with
    per-coordinate statistics, e.g. DPM-Solver-v3, has one).

    Coefficients are scalars per slot, or may carry trailing *feature* axes that
    broadcast against one sample (``x: [K, *F]``, ``d: [K, Hd, *F]``): per-coordinate
    coefficients, used by DPM-Solver-v3's empirical model statistics.
    """

    x: Array
    d: Array
    e: Array
    z: Array | None
    c: Array | None = None


class Plan(NamedTuple):
    """A solver compiled to arrays; a pytree that can be jitted, vmapped, saved.

    Attributes:
        t: ``[K]`` times passed to the denoiser, one per network evaluation.
        alpha, sigma: ``[K]`` the schedule at the evaluation times, used to turn a
            data prediction into a noise prediction.
        evaluate: where each slot evaluates the network (``Combo`` with leading K).
        update: how each slot moves the anchor after the evaluation.
        final: the output combination after the last slot.
        init_d, init_e: ``[Hd]``, ``[He]`` multiples of ``x_T`` that pre-fill the
            buffers (analytical first step; zeros otherwise).
        noise_span: ``[K + 1, 2]`` for a stochastic plan whose every noise draw was
            declared with a span (``PlanBuilder.noise(span=...)``): the interval of
            the schedule's time whose Brownian increment slot ``k`` (row ``K``: the
            final combination) uses; ``(0, 0)`` for a slot without noise. ``None``
            otherwise. Read only by a noise source such as
            :class:`samplax.solvers.noise.BrownianNoise`.
        basis: ``[n, n]`` orthogonal matrix, or ``None`` (the sample's own
            coordinates). With a basis the executor runs the plan on the
            coordinates ``z = x.reshape(n) @ basis`` of a sample of ``n`` entries
            and maps the result back, so that per-coordinate coefficients act on
            the basis's directions (e.g. the principal components of the data,
            :func:`samplax.search.basis.pca_basis`). Scalar coefficients give the
            same samples in any basis. It belongs to the plan, not to the search,
            because per-coordinate coefficients (also DPM-Solver-v3's) mean nothing
            without their coordinates: a plan loaded from a file must give its
            samples through the one ``sample`` with any denoiser, and ``pad_plan``
            and ``stack_plans`` carry it.
        solver_t: ``[K]`` the noise schedule's times of the slots, where the network
            is evaluated at other times ``t`` (network times moved by a search:
            ``usf(model_times=...)``, :mod:`samplax.search.free_plan`); ``None``:
            ``t`` itself. ``alpha`` and ``sigma`` are the schedule at these times;
            :func:`~samplax.solvers.executor.sample` checks them against the
            denoiser's own schedule.
    """

    t: Array
    alpha: Array
    sigma: Array
    evaluate: Combo
    update: Combo
    final: Combo
    init_d: Array
    init_e: Array
    noise_span: Array | None = None
    basis: Array | None = None
    solver_t: Array | None = None

    @property
    def nfe(self) -> int:
        """Number of network evaluations (static: the length of the plan)."""
        return int(self.t.shape[-1])

    @property
    def stochastic(self) -> bool:
        return self.evaluate.z is not None


# --------------------------------------------------------------------------------------
# Symbolic linear expressions
# --------------------------------------------------------------------------------------


class Lin:
    """A linear combination of the anchor, model outputs and noise.

    Keys: ``("x", v)`` the anchor at version ``v``; ``("d", j)`` / ``("e", j)`` the
    data / noise prediction of evaluation ``j``; ``("z", n)`` noise variable ``n``.
    Coefficients are Python floats or ``jnp`` scalars. Supports ``+ - *`` by
    scalars, so solvers read like their papers' equations.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: dict | None = None):
        self.terms = dict(terms or {})

    def __add__(self, other: Lin) -> Lin:
        if not isinstance(other, Lin):
            if _is_zero(other):
                return self
            return NotImplemented
        out = dict(self.terms)
        for key, c in other.terms.items():
            out[key] = out[key] + c if key in out else c
        return Lin(out)

    __radd__ = __add__

    def __neg__(self) -> Lin:
        return Lin({k: -c for k, c in self.terms.items()})

    def __sub__(self, other: Lin) -> Lin:
        return self + (-other)

    def __rsub__(self, other) -> Lin:
        return (-self) + other

    def __mul__(self, scalar) -> Lin:
        if isinstance(scalar, Lin):
            raise TypeError("a plan is linear in model outputs: cannot multiply two Lin")
        return Lin({k: c * scalar for k, c in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar) -> Lin:
        return self * (1.0 / scalar)

    def __repr__(self) -> str:
        return f"Lin({self.terms})"


def _is_zero(v) -> bool:
    return isinstance(v, int | float) and v == 0


def constant(value) -> Lin:
    """A constant offset (a sample-shaped array, or a scalar added to every coordinate)."""
    return Lin({("c", 0): value})


def lin_sum(items: Sequence[Lin], weights: Sequence[Any]) -> Lin:
    """``sum_i weights[i] * items[i]``."""
    out = Lin()
    for item, w in zip(items, weights, strict=True):
        out = out + item * w
    return out


# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------


class Output(NamedTuple):
    """Handles to one network evaluation: its data and noise predictions, and where."""

    d: Lin
    e: Lin
    t: Array
    lam: Array


class PlanBuilder:
    """Assemble a plan from update formulas written with :class:`Lin`.

    Usage (DDIM in data form)::

        b = PlanBuilder(schedule)
        for s, t in zip(ts[:-1], ts[1:]):
            out = b.evaluate(b.x, s)
            h = out.lam - schedule.lam(t)   # (sign as needed)
            b.set_x(sigma_t / sigma_s * b.x + alpha_t * -jnp.expm1(-h) * out.d)
        plan = b.build()

    ``b.x`` is the current anchor; ``set_x`` replaces it; ``noise()`` draws a
    fresh Gaussian variable that may be used within one NFE slot only (its
    evaluation point and the anchor updates up to the next evaluation);
    ``evaluate(point, t)`` opens the next NFE slot. Anchor updates made between
    two evaluations are folded into one update of the executor.
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self._logical = 0  # version of the anchor handed out by ``x``
        self._pending = Lin({("A", 0): 1.0})  # the logical anchor, in physical terms
        self._slots: list[dict] = []
        self._virtual: list[tuple[Any, Any]] = []
        self._n_noise = 0
        self._noise_spans: dict[int, Any] = {}

    @property
    def x(self) -> Lin:
        """The current anchor (the latest value given to :meth:`set_x`)."""
        return Lin({("x", self._logical): 1.0})

    @property
    def nfe(self) -> int:
        return len(self._slots)

    def noise(self, span=None) -> Lin:
        """A fresh standard Gaussian variable (shape of the sample).

        ``span = (t_a, t_b)``, optional: the interval of the schedule's time that
        this draw stands for, so that a Brownian noise source can return the
        normalized increment ``(W(t_b) - W(t_a))/sqrt(|t_b - t_a|)`` of one path
        instead of an independent draw (same law; see :attr:`Plan.noise_span`).
        Draws of one plan must have disjoint spans.
        """
        self._n_noise += 1
        if span is not None:
            self._noise_spans[self._n_noise - 1] = span
        return Lin({("z", self._n_noise - 1): 1.0})

    def _substitute(self, expr: Lin) -> Lin:
        out = Lin()
        for key, c in expr.terms.items():
            if key[0] == "x":
                if key[1] != self._logical:
                    raise ValueError(
                        "expression uses a stale anchor: b.x was read before a later "
                        "set_x; read b.x again after updating it"
                    )
                out = out + self._pending * c
            else:
                out = out + Lin({key: c})
        return out

    def set_x(self, expr: Lin) -> None:
        """Make ``expr`` the new anchor."""
        self._pending = self._substitute(expr)
        self._logical += 1

    def virtual_output(self, d_coef, e_coef, t) -> Output:
        """A model output known in closed form as ``(d_coef x_T, e_coef x_T)``: no NFE.

        Used by the analytical first step (AFS). Only before the first evaluation.
        """
        if self._slots:
            raise ValueError("virtual outputs must be declared before the first evaluation")
        j = -1 - len(self._virtual)
        self._virtual.append((d_coef, e_coef))
        return Output(Lin({("d", j): 1.0}), Lin({("e", j): 1.0}), t, self.schedule.lam(t))

    def _close_slot(self) -> None:
        k = len(self._slots) - 1
        self._slots[k]["update"] = self._pending
        self._pending = Lin({("A", k + 1): 1.0})

    def evaluate(self, point: Lin, t, *, model_t=None) -> Output:
        """Open the next NFE slot: evaluate the denoiser at ``point``, time ``t``.

        ``model_t`` (default ``t``) is the time handed to the denoiser, for
        decoupled network times; ``alpha(t)``, ``sigma(t)`` convert its output.
        """
        if self._slots:
            self._close_slot()
        # Before the first evaluation nothing closes: anchor changes made so far
        # stay pending and become part of slot 0's update.
        point = self._substitute(point)
        t = jnp.asarray(t)
        k = len(self._slots)
        self._slots.append(
            dict(
                eval=point,
                t=t if model_t is None else jnp.asarray(model_t),
                solver_t=None if model_t is None else t,
                alpha=self.schedule.alpha(t),
                sigma=self.schedule.sigma(t),
                update=None,
            )
        )
        return Output(Lin({("d", k): 1.0}), Lin({("e", k): 1.0}), t, self.schedule.lam(t))

    def build(self, out: Lin | None = None) -> Plan:
        """Finish; ``out`` (default: the anchor) is what the sampler returns."""
        if not self._slots:
            raise ValueError("a plan needs at least one network evaluation")
        self._close_slot()
        final = self._substitute(self.x if out is None else out)
        return _assemble(self._slots, final, self._virtual, self._noise_spans)


def _assemble(slots: list[dict], final: Lin, virtual: list, spans: dict | None = None) -> Plan:
    K = len(slots)
    # (where, slot index, expression, lookback offset): at an evaluation the buffer
    # holds outputs k-H..k-1; after the push (update) it holds k-H+1..k.
    exprs = [(k, s["eval"], 0) for k, s in enumerate(slots)]
    exprs += [(k, s["update"], 1) for k, s in enumerate(slots)]
    exprs += [(K, final, 0)]
    need = {"d": 0, "e": 0}
    has_const = False
    noise_slot: dict[int, int] = {}
    for k, expr, offset in exprs:
        for key in expr.terms:
            kind = key[0]
            if kind in ("d", "e"):
                j = key[1]
                if j > k or (offset == 0 and j == k):
                    raise ValueError(f"slot {k} uses model output {j} before it exists")
                need[kind] = max(need[kind], k - j + offset)
            elif kind == "c":
                has_const = True
            elif kind == "A":
                if key[1] != k:
                    raise ValueError(f"slot {k} refers to the anchor of slot {key[1]}")
            elif kind == "z":
                owner = noise_slot.setdefault(key[1], k)
                if owner != k:
                    raise ValueError(
                        f"noise variable {key[1]} is used in slots {owner} and {k}; a noise "
                        "draw may only be used within one slot"
                    )
    per_slot_noise: dict[int, int] = {}
    for n, k in noise_slot.items():
        if k in per_slot_noise:
            raise ValueError(f"slot {k} uses two noise variables; use one per slot")
        per_slot_noise[k] = n
    Hd, He = need["d"], need["e"]
    stochastic = bool(noise_slot)

    def combo(expr: Lin, k: int) -> tuple:
        cx = expr.terms.get(("A", k), 0.0)
        cd = [0.0] * Hd
        ce = [0.0] * He
        cz = 0.0
        cc = 0.0
        for key, c in expr.terms.items():
            if key[0] == "d":
                cd[key[1] % Hd] = cd[key[1] % Hd] + c
            elif key[0] == "e":
                ce[key[1] % He] = ce[key[1] % He] + c
            elif key[0] == "z":
                cz = c
            elif key[0] == "c":
                cc = c
        return cx, cd, ce, cz, cc

    def stack(rows: list[tuple]) -> Combo:
        cx, cd, ce, cz, cc = zip(*rows, strict=True)
        return Combo(
            x=_vec(cx),
            d=_mat(cd, Hd),
            e=_mat(ce, He),
            z=_vec(cz) if stochastic else None,
            c=_vec(cc) if has_const else None,
        )

    fx, fd, fe, fz, fc = combo(final, K)
    init_d = [0.0] * Hd
    init_e = [0.0] * He
    for i, (cd, ce) in enumerate(virtual):
        j = -1 - i
        if Hd:
            init_d[j % Hd] = cd
        if He:
            init_e[j % He] = ce
    noise_span = None
    if stochastic and spans and all(n in spans for n in noise_slot):
        rows = [(0.0, 0.0)] * (K + 1)
        for n, k in noise_slot.items():
            rows[k] = tuple(spans[n])
        noise_span = jnp.stack([_vec(r) for r in rows])
    return Plan(
        t=_vec([s["t"] for s in slots]),
        alpha=_vec([s["alpha"] for s in slots]),
        sigma=_vec([s["sigma"] for s in slots]),
        evaluate=stack([combo(s["eval"], k) for k, s in enumerate(slots)]),
        update=stack([combo(s["update"], k) for k, s in enumerate(slots)]),
        final=Combo(_scalar(fx), _vec(fd), _vec(fe), _scalar(fz) if stochastic else None,
                    _scalar(fc) if has_const else None),
        init_d=_vec(init_d),
        init_e=_vec(init_e),
        noise_span=noise_span,
        solver_t=(None if all(s["solver_t"] is None for s in slots) else
                  _vec([s["t"] if s["solver_t"] is None else s["solver_t"] for s in slots])),
    )


def _float_dtype():
    return jnp.result_type(float)


def _scalar(c) -> Array:
    return jnp.asarray(c, dtype=_float_dtype())


def _stack_broadcast(vals: list) -> Array:
    # Scalars and per-coordinate (feature-shaped) coefficients may mix: broadcast.
    shape = np.broadcast_shapes(*[jnp.shape(v) for v in vals])
    if any(jnp.shape(v) != shape for v in vals):
        vals = [jnp.broadcast_to(v, shape) for v in vals]
    return jnp.stack(vals)


def _vec(cs) -> Array:
    if len(cs) == 0:
        return jnp.zeros((0,), _float_dtype())
    return _stack_broadcast([_scalar(c) for c in cs])


def _mat(rows, width: int) -> Array:
    if width == 0:
        return jnp.zeros((len(rows), 0), _float_dtype())
    rows = [_vec(r) for r in rows]
    # per-coordinate rows are [H, *F]; scalar rows [H] get trailing axes to match
    nd = max(r.ndim for r in rows)
    rows = [r.reshape(r.shape[:1] + (1,) * (nd - r.ndim) + r.shape[1:]) for r in rows]
    return _stack_broadcast(rows)


# --------------------------------------------------------------------------------------
# Batches of plans
# --------------------------------------------------------------------------------------


def pad_plan(plan: Plan, hd: int, he: int) -> Plan:
    """Grow a plan's buffers to ``hd``/``he`` entries, keeping its samples identical.

    Positions are ``j mod H``, so a larger buffer needs re-indexed columns: output
    ``j`` moves from column ``j mod H`` to ``j mod H'`` for the slots that use it.
    """
    return Plan(
        t=plan.t,
        alpha=plan.alpha,
        sigma=plan.sigma,
        evaluate=_pad_combo(plan.evaluate, hd, he, offset=0),
        update=_pad_combo(plan.update, hd, he, offset=1),
        final=_pad_final(plan, hd, he),
        init_d=_pad_init(plan.init_d, hd),
        init_e=_pad_init(plan.init_e, he),
        noise_span=plan.noise_span,
        basis=plan.basis,
        solver_t=plan.solver_t,
    )


def _remap(coef: Array, new_h: int, offset: int, first_slot: int = 0) -> Array:
    """Re-index ``[K, H, *F]`` buffer columns from ``j mod H`` to ``j mod new_h``."""
    K, H = coef.shape[:2]
    feat = coef.shape[2:]
    if new_h < H:
        raise ValueError(f"cannot shrink a buffer from {H} to {new_h}")
    if new_h == H:
        return coef
    out = jnp.zeros((K, new_h) + feat, coef.dtype)
    if H == 0:
        return out
    rows = []
    for r in range(K):
        k = first_slot + r
        row = jnp.zeros((new_h,) + feat, coef.dtype)
        # outputs visible at slot k: j in [k + offset - H, k + offset - 1]
        for j in range(k + offset - H, k + offset):
            row = row.at[j % new_h].add(coef[r, j % H])
        rows.append(row)
    return jnp.stack(rows)


def _pad_combo(c: Combo, hd: int, he: int, offset: int) -> Combo:
    return Combo(c.x, _remap(c.d, hd, offset), _remap(c.e, he, offset), c.z, c.c)


def _pad_final(plan: Plan, hd: int, he: int) -> Combo:
    K = plan.nfe
    f = plan.final
    d = _remap(f.d[None], hd, 0, first_slot=K)[0]
    e = _remap(f.e[None], he, 0, first_slot=K)[0]
    return Combo(f.x, d, e, f.z, f.c)


def _pad_init(init: Array, new_h: int) -> Array:
    H = init.shape[0]
    out = jnp.zeros((new_h,), init.dtype)
    for j in range(-H, 0):
        out = out.at[j % new_h].add(init[j % H])
    return out


def stack_plans(plans: Sequence[Plan]) -> Plan:
    """Stack plans of equal NFE (padding their buffers) for ``jax.vmap``."""
    if isinstance(plans, Plan) or isinstance(plans, str | bytes) or not hasattr(
            plans, "__iter__"):
        raise TypeError(f"stack_plans takes a sequence of plans, got "
                        f"{'a single Plan' if isinstance(plans, Plan) else repr(plans)}")
    plans = list(plans)
    if not plans:
        raise ValueError("stack_plans needs at least one plan")
    for i, p in enumerate(plans):
        if not isinstance(p, Plan):
            raise TypeError(f"stack_plans: plans[{i}] must be a Plan (from a solver "
                            f"constructor), got {p!r:.60} ({type(p).__name__})")
    nfes = {p.nfe for p in plans}
    if len(nfes) != 1:
        raise ValueError(f"plans to stack must have the same NFE, got {sorted(nfes)}")
    kinds = {p.stochastic for p in plans}
    if len(kinds) != 1:
        raise ValueError("cannot stack deterministic and stochastic plans together")
    if len({p.basis is None for p in plans}) != 1:
        raise ValueError("cannot stack plans with a basis and plans without one together")
    hd = max(p.evaluate.d.shape[1] for p in plans)
    he = max(p.evaluate.e.shape[1] for p in plans)
    if len({p.solver_t is None for p in plans}) != 1:  # some have moved network times
        plans = [p if p.solver_t is not None else p._replace(solver_t=p.t) for p in plans]
    padded = [pad_plan(p, hd, he) for p in plans]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded)


def describe(plan: Plan) -> str:
    """A short human-readable summary (NFE, buffer sizes, times)."""
    t = np.asarray(plan.t)
    return (
        f"Plan(nfe={plan.nfe}, Hd={plan.evaluate.d.shape[1]}, He={plan.evaluate.e.shape[1]}, "
        f"stochastic={plan.stochastic}, t={np.array2string(t, precision=4)})"
    )
