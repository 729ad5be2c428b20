"""The one executor: run any :class:`~samplax.solvers.plan.Plan` as a ``lax.scan``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from samplax.numerics import safe_div
from samplax.schedules.base import NoiseSchedule
from samplax.solvers.draws import is_threefry, normal_rows, sample_noise, slot_row_words
from samplax.solvers.plan import Combo, Plan

Array = Any
Denoiser = Callable[[Array, Array], Array]


def _weighted(c, B, dtype, slot=None, new=None):
    """``sum_h c[h] B[h]``; ``c`` is ``[H]`` or per-coordinate ``[H, *F]`` (F: trailing
    axes of one sample, broadcast over any batch axes of ``B[h]``).

    With ``slot`` and ``new``, the sum is over ``B`` with entry ``slot`` replaced by
    ``new``, without building that buffer (see :class:`_History`). The sum is unrolled
    over the (static, short) history so that XLA fuses it with the rest of the step
    into one pass over the state; a ``dot`` against the stacked buffer is a kernel of
    its own, with its own output.
    """
    c = c.astype(dtype)
    if c.ndim > 1:
        c = c.reshape(c.shape[:1] + (1,) * (B.ndim - c.ndim) + c.shape[1:])
    out = None
    for h in range(B.shape[0]):
        term = c[h] * B[h]
        if slot is not None:
            term = jnp.where(slot == h, c[h] * new, term)
        out = term if out is None else out + term
    return out


def _combine(c: Combo, x, D, E, z, dtype, new_d=None, new_e=None):
    """``c.x x + c.d . D + c.e . E + c.z z + c.c``; ``new_d = (slot, d)`` stands for ``D``
    with ``d`` written at ``slot`` (likewise ``new_e``)."""
    out = c.x.astype(dtype) * x
    if D.shape[0]:
        out = out + _weighted(c.d, D, dtype, *(new_d or ()))
    if E.shape[0]:
        out = out + _weighted(c.e, E, dtype, *(new_e or ()))
    if z is not None:
        out = out + c.z.astype(dtype) * z
    if c.c is not None:
        out = out + c.c.astype(dtype)
    return out


class _History(NamedTuple):
    """A history buffer ``[H, ...]`` whose newest entry ``new`` is not yet written at
    ``slot``. Each slot writes the previous slot's entry first, before any read of
    the buffer, and reads the newest through :func:`_combine`'s substitution: then
    every read of the buffer follows its one in-place write, and XLA keeps a single
    copy of it (writing after the reads made it copy the whole history)."""

    buf: Array
    new: Array | None
    slot: Array | None


def _history(init, x_T, dtype) -> _History:
    buf = init.astype(dtype)[(...,) + (None,) * x_T.ndim] * x_T[None]
    if not buf.shape[0]:
        return _History(buf, None, None)
    return _History(buf, buf[0], jnp.zeros((), jnp.int32))


def _settled(h: _History):
    if h.new is None:
        return h.buf
    return jax.lax.dynamic_update_index_in_dim(h.buf, h.new, h.slot, 0)


def _newest(h: _History):
    return None if h.new is None else (h.slot, h.new)


def _pending(buf, new) -> _History:
    if new is None:
        return _History(buf, None, None)
    slot, value = new
    return _History(buf, value, jnp.asarray(slot, jnp.int32))


class SlotHook(Protocol):
    """A transform of the whole population between NFE slots (e.g. SMC resampling).

    ``init(x_T)`` gives the hook's state; after slot ``k`` the executor calls
    ``hook(state, k, t, x, D, E, d, key) -> (state, x, D, E)`` with the anchor
    ``x``, the buffers ``D``/``E`` (leading buffer axis, then the batch axis) and
    the newest data prediction ``d``. Resampling reorders the batch axis of
    ``x``, ``D`` and ``E`` together so multistep histories stay consistent.
    """

    def init(self, x_T: Array) -> Any: ...

    def __call__(self, state, k, t, x, D, E, d, key) -> tuple: ...


class NoiseSource(Protocol):
    """Where a stochastic plan's Gaussian draws come from (``sample(..., noise=)``).

    ``noise(key, span, shape, dtype) -> z`` returns a standard normal array of
    ``shape`` for the slot whose :attr:`Plan.noise_span` row is ``span``; row ``i``
    of the batch must depend only on ``(key, i)`` so that samples do not change
    with the batch size.
    """

    def __call__(self, key, span, shape, dtype) -> Array: ...


class StatefulDenoiser(Protocol):
    """A denoiser that carries state from one NFE slot to the next (e.g. APG momentum).

    ``init_state(x_T)`` gives the initial state; slot ``k`` calls
    ``step(state, x, t) -> (x0_hat, state)`` instead of ``denoiser(x, t)``. The
    executor recognises one by these two methods. Each entry of :class:`Segments`
    keeps its own state. A :class:`SlotHook` does not see (or reorder) this state.
    """

    def init_state(self, x_T: Array) -> Any: ...

    def step(self, state, x: Array, t: Array) -> tuple: ...


def _is_stateful(den) -> bool:
    return callable(getattr(den, "init_state", None)) and callable(getattr(den, "step", None))


class Segments(NamedTuple):
    """Different denoisers on consecutive ranges of NFE slots.

    ``denoisers[i]`` runs slots ``starts[i] .. starts[i+1] - 1`` (``starts[0] == 0``).
    Each range is its own ``lax.scan`` inside one program, so a transform that is
    switched off on a range (e.g. guidance outside its interval) costs nothing
    there, unlike masking, which still pays for every branch.
    """

    denoisers: tuple
    starts: tuple


def _segments(denoiser, K: int) -> list[tuple[Denoiser, int, int]]:
    if not isinstance(denoiser, Segments):
        return [(denoiser, 0, K)]
    starts = [int(s) for s in denoiser.starts]
    if len(starts) != len(denoiser.denoisers) or not starts or starts[0] != 0:
        raise ValueError("Segments needs one start per denoiser, the first being 0")
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= max(K, 1):
        raise ValueError(f"Segments starts must increase within the plan's {K} slots: {starts}")
    ends = starts[1:] + [K]
    return list(zip(denoiser.denoisers, starts, ends))


def _rotation(basis, shape):
    """``(to, back)``: a sample of trailing shape ``F`` (the shortest trailing axes of
    ``shape`` with as many entries as ``basis`` has rows) to its ``n`` coordinates
    in ``basis``, and back."""
    if basis.ndim != 2 or basis.shape[0] != basis.shape[1]:
        raise ValueError(f"a plan's basis must be a square matrix, got shape {basis.shape}")
    n = basis.shape[0]
    for j in range(len(shape) - 1, -1, -1):
        if math.prod(shape[j:]) == n:
            break
    else:
        raise ValueError(f"the plan's basis has {n} rows, but no trailing axes of x_T "
                         f"{tuple(shape)} hold {n} entries")
    feat = tuple(shape[j:])

    def to(x):
        return x.reshape(x.shape[:x.ndim - len(feat)] + (n,)) @ basis.astype(x.dtype)

    def back(z):
        return (z @ basis.T.astype(z.dtype)).reshape(z.shape[:-1] + feat)

    return to, back


def _first_bad(bad, k, finite_state, finite_output):
    """``bad = [slot, what]`` updated at slot ``k``: the first slot at which the model
    output (``what = 1``) or the state after the slot (``what = 2``) is not finite."""
    hit = (bad[0] < 0) & ~(finite_state & finite_output)
    what = jnp.where(finite_output, 2, 1)
    return jnp.where(hit, jnp.stack([k, what]).astype(bad.dtype), bad)


def _raise_if_bad(bad, ts, x_finite):
    """Host side of ``sample(check=True)``: raise on the first non-finite slot."""
    bad, ts, x_finite = np.asarray(bad), np.asarray(ts), np.asarray(x_finite)
    if not np.all(x_finite):
        raise FloatingPointError("sample(check=True): x_T is not finite (NaN or inf in the "
                                 "initial noise)")
    # under vmap the arrays carry batch axes: report the first run that went wrong
    rows = bad.reshape(-1, 2)
    for slot, what in rows:
        if slot >= 0:
            t = ts.reshape(-1, ts.shape[-1])[0][slot]
            part = {1: "the model output", 2: "the state",
                    3: "the sample (the plan's output combination)"}[int(what)]
            raise FloatingPointError(f"sample(check=True): {part} became non-finite at slot "
                                     f"{slot} (t = {t:.6g}); the earlier slots were finite")


def _sample_in_basis(denoiser, plan: Plan, x_T, key, return_trajectory, hook, noise):
    """Run ``plan`` on the coordinates of ``x_T`` in ``plan.basis`` (see :class:`Plan`):
    the initial noise is rotated in, the denoiser sees and returns samples in their
    own coordinates, and the result is rotated back."""
    if hook is not None:
        raise ValueError("a plan with a basis runs on rotated coordinates, which a slot "
                         "hook would not expect; sample it without hook=")
    to, back = _rotation(jnp.asarray(plan.basis), x_T.shape)

    def wrap(den):
        if _is_stateful(den):
            raise ValueError("a plan with a basis needs plain denoisers, not stateful ones")

        def rotated(z, t):
            x = back(z)
            d = jnp.asarray(den(x, t))
            if d.shape != x.shape:
                raise ValueError(f"denoiser returned shape {d.shape} for input of shape "
                                 f"{x.shape}")
            return to(d.astype(z.dtype))

        return rotated

    if isinstance(denoiser, Segments):
        den = denoiser._replace(denoisers=tuple(wrap(d) for d in denoiser.denoisers))
    else:
        den = wrap(denoiser)
    out = sample(den, plan._replace(basis=None), to(x_T), key,
                 return_trajectory=return_trajectory, noise=noise)
    if return_trajectory:
        return back(out[0]), back(out[1])
    return back(out)


def _check_arguments(denoiser, plan, key, hook) -> None:
    """Types of ``sample``'s arguments, checked before any tracing."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a samplax Plan (from a solver such as "
                        f"samplax.dpm_solver_pp), got {type(plan).__name__}")
    dens = denoiser.denoisers if isinstance(denoiser, Segments) else (denoiser,)
    for den in dens:
        if not (callable(den) or _is_stateful(den)):
            raise TypeError(f"denoiser must be a function denoiser(x, t) -> x0_hat, got "
                            f"{type(den).__name__}")
    if key is not None:
        k = jnp.asarray(key) if not isinstance(key, jax.Array) else key
        typed = jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
        raw = k.dtype == jnp.uint32 and k.shape == (2,)
        if not (typed and k.shape == ()) and not raw:
            raise TypeError(f"key must be one PRNG key such as jax.random.key(0), got "
                            f"{type(key).__name__} of dtype {k.dtype} and shape {k.shape}")
    if hook is not None and not (callable(hook) and callable(getattr(hook, "init", None))):
        raise TypeError("hook must be a SlotHook: callable, with init(x_T) giving its state")


def _call(den, x, t):
    """``den(x, t)``; a call that fails on its signature says so."""
    try:
        return den(x, t)
    except TypeError as err:
        if "positional argument" in str(err):
            raise TypeError("the denoiser must take two arguments, denoiser(x, t) with x "
                            "the state and t the time; calling it so failed (see above)"
                            ) from err
        raise


def _schedule_name(schedule) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(schedule).items()
                       if isinstance(v, int | float | str))
    return f"{type(schedule).__name__}({fields})"


def _check_schedule(denoiser, plan: Plan) -> None:
    """A denoiser that carries its noise schedule (``denoiser.schedule``, as samplax's
    adapters and models do) must run a plan built on that schedule: the plan's
    ``alpha`` and ``sigma`` must be the schedule's at the plan's times. Skipped where
    either is traced (inside ``jit`` with the plan or schedule as an argument)."""
    dens = denoiser.denoisers if isinstance(denoiser, Segments) else (denoiser,)
    ts = plan.t if plan.solver_t is None else plan.solver_t
    for den in dens:
        schedule = getattr(den, "schedule", None)
        if not isinstance(schedule, NoiseSchedule):
            continue
        try:  # a constant plan inside jit is still checked, at trace time
            t, a, s = (np.asarray(v, np.float64) for v in (ts, plan.alpha, plan.sigma))
            with jax.ensure_compile_time_eval():
                mine_a = np.asarray(schedule.alpha(jnp.asarray(ts)), np.float64)
                mine_s = np.asarray(schedule.sigma(jnp.asarray(ts)), np.float64)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return
        tol = 1e-4 * np.maximum(np.abs(mine_a) + np.abs(mine_s), 1e-6)
        off = (np.abs(mine_a - a) > tol) | (np.abs(mine_s - s) > tol)
        if off.any():
            k = int(np.argmax(off))
            raise ValueError(
                f"the plan was built on another noise schedule than the denoiser's "
                f"{_schedule_name(schedule)}: at slot {k} (t = {t[k]:.6g}) the plan has "
                f"sigma = {s[k]:.6g}, alpha = {a[k]:.6g}, the denoiser's schedule sigma = "
                f"{mine_s[k]:.6g}, alpha = {mine_a[k]:.6g}; build the plan on the schedule "
                "the denoiser was wrapped with")


def _check_coordinates(plan: Plan, shape) -> None:
    """Per-coordinate coefficients must match the trailing axes of the samples, or
    they would broadcast into a wrong sample."""
    for name, lead in (("evaluate", 1), ("update", 1), ("final", 0)):
        feat = tuple(jnp.shape(getattr(plan, name).x)[lead:])
        if feat and (len(feat) > len(shape) or tuple(shape[len(shape) - len(feat):]) != feat):
            raise ValueError(f"the plan's {name} coefficients are per-coordinate for samples "
                             f"of shape {feat}; x_T has shape {tuple(shape)}")


def sample(
    denoiser: Denoiser | Segments,
    plan: Plan,
    x_T: Array,
    key: Array | None = None,
    *,
    return_trajectory: bool = False,
    hook: SlotHook | None = None,
    noise: NoiseSource | None = None,
    check: bool = False,
):
    """Draw samples by running ``plan`` from the initial noise ``x_T``.

    Args:
        denoiser: ``denoiser(x, t) -> x0_hat`` with ``x`` of the shape of ``x_T``
            and ``t`` a scalar time of the plan's noise schedule (see
            :mod:`samplax.models.adapters` to wrap epsilon, v, flow or score
            models), a :class:`StatefulDenoiser`, or :class:`Segments` of either
            over slot ranges.
        plan: a plan from any solver constructor (``samplax.dpm_solver_pp(...)``).
        x_T: initial state at the plan's first time, e.g.
            ``sigma(t_0) * jax.random.normal(key, shape)`` for a VP model. Its dtype
            is the model's: the denoiser is called with states of this dtype and the
            sample is returned in it, while the state, the history buffers and the
            solver's combinations accumulate in ``promote_types(dtype, float32)``
            (bfloat16 and float16 states keep a float32 copy).
        key: PRNG key; required when the plan is stochastic. Slot ``k`` draws
            its noise from ``fold_in(key, k)`` and per batch row ``i`` from
            ``fold_in(., i)`` (``jax.random.normal``'s numbers, computed by
            :mod:`samplax.solvers.draws`); a slot whose combinations do not weigh its
            noise draws nothing.
        return_trajectory: also return the anchor after each NFE slot, ``[K, ...]``.
        hook: a :class:`SlotHook` run after every slot (population transforms such
            as SMC resampling); its key stream is ``fold_in(key, -1 - k)``.
        noise: where a stochastic plan's draws come from (default: independent
            draws as above). A :class:`NoiseSource` such as
            :class:`samplax.solvers.noise.BrownianNoise` is called as
            ``noise(key, span, shape, dtype)`` with the slot's
            :attr:`~samplax.solvers.plan.Plan.noise_span` row.
        check: raise ``FloatingPointError`` naming the first slot (and its time) at
            which the model output or the state became NaN or inf, or a non-finite
            ``x_T``, instead of returning a non-finite sample. The test runs in the
            compiled program (a flag carried through the scan, reported by one host
            callback at the end), so it works under ``jit`` and ``vmap``; off, nothing
            is traced. Under ``jit`` the error arrives wrapped in the runtime's
            exception, with this message inside.

    Returns:
        The sample (same shape and dtype as ``x_T``); then the trajectory if asked;
        then the hook's final state if a hook is given.
    """
    _check_arguments(denoiser, plan, key, hook)
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be a floating-point array, got dtype {x_T.dtype}")
    if x_T.ndim == 0:
        raise ValueError("x_T must be an array of samples (batch axis first), got a scalar")
    if not check and not isinstance(x_T, jax.core.Tracer):
        with jax.ensure_compile_time_eval():  # a concrete x_T costs one reduction
            if not bool(jnp.all(jnp.isfinite(x_T))):
                raise FloatingPointError("x_T is not finite (NaN or inf in the initial "
                                         "noise)")
    if plan.t.ndim != 1:
        raise ValueError(
            f"plan has batch axes {plan.t.shape[:-1]}; vmap sample() over stacked plans"
        )
    if plan.stochastic and key is None:
        raise ValueError("this plan is stochastic: pass a PRNG key, e.g. jax.random.key(0)")
    if hook is not None and key is None:
        raise ValueError("a slot hook needs a PRNG key, e.g. jax.random.key(0)")
    _check_schedule(denoiser, plan)
    if plan.basis is not None:
        if check:
            raise ValueError("check=True is not supported for a plan with a basis yet; "
                             "sample without it")
        return _sample_in_basis(denoiser, plan, x_T, key, return_trajectory, hook, noise)
    _check_coordinates(plan, x_T.shape)
    # The denoiser sees and sample returns x_T's dtype; the state, the buffers and the
    # combinations accumulate in at least float32. In bfloat16 eps_hat = (x - alpha
    # D)/sigma cancels to a few bits at small sigma, and the noise-prediction
    # multistep solvers (PNDM, DPM-Solver, DEIS) combine such terms with weights
    # ~ sigma_tilde that do not cancel in rounding: relative errors of 1-90 at NFE 5.
    model_dtype = x_T.dtype
    dtype = jnp.promote_types(model_dtype, jnp.float32)
    x_T = x_T.astype(dtype)
    if noise is not None and plan.stochastic and plan.noise_span is None:
        raise ValueError(
            "this plan's noise draws carry no time spans (PlanBuilder.noise(span=...)), so "
            "a Brownian noise source cannot place them on one path; sample without noise="
        )
    hd = plan.evaluate.d.shape[1]
    he = plan.evaluate.e.shape[1]
    D0, E0 = _history(plan.init_d, x_T, dtype), _history(plan.init_e, x_T, dtype)
    K = plan.nfe

    # The keys of every slot and batch row, fold_in(fold_in(key, k), i), made once: a
    # slot's draw is then one elementwise hash that XLA fuses (draws.py).
    words = None
    if plan.stochastic and noise is None and is_threefry(key):
        words = slot_row_words(key, K + 1, x_T.shape[0])

    def draw(k):
        if not plan.stochastic:
            return None
        if noise is not None:
            return noise(key, plan.noise_span[k], x_T.shape, dtype)
        if words is None:
            return sample_noise(jax.random.fold_in(key, k), x_T.shape, dtype)
        return normal_rows(words[0][k], words[1][k], x_T.shape[1:], dtype)

    def drawn(k, *combos):
        """Slot ``k``'s draw where one of its combinations weighs the noise, else zeros.
        Inside ``lax.cond`` the draw is computed once into a buffer (XLA fuses an inline
        draw into each of its uses, repeating the hash) and skipped where unused."""
        if not plan.stochastic:
            return None
        weights = [c.z for c in combos if c.z is not None]
        try:  # a concrete plan: no draw at all where no combination weighs it
            if not any(np.any(np.asarray(w)) for w in weights):
                return None
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            pass
        used = jnp.any(jnp.stack([jnp.any(w != 0) for w in weights]))
        return jax.lax.cond(used, lambda: draw(k), lambda: jnp.zeros(x_T.shape, dtype))

    def make_body(den, i):
        def body(carry, slot):
            (x, Dh, Eh, hs, ds), bad = carry
            k, t, alpha, sigma, ce, cu = slot
            D, E = _settled(Dh), _settled(Eh)
            z = drawn(k, ce, cu)
            x_eval = _combine(ce, x, D, E, z, dtype)
            x_in = x_eval.astype(model_dtype)
            if _is_stateful(den):
                d, s_i = den.step(ds[i], x_in, t)
                ds = ds[:i] + (s_i,) + ds[i + 1:]
            else:
                d = _call(den, x_in, t)
            if not isinstance(d, jax.Array | np.ndarray):
                raise TypeError(f"the denoiser returned {type(d).__name__}; it must return "
                                "an array of x0 predictions of x's shape")
            d = jnp.asarray(d)
            if not jnp.issubdtype(d.dtype, jnp.floating):
                raise TypeError(f"the denoiser returned dtype {d.dtype}; it must return "
                                "floating-point predictions of x0")
            d = d.astype(dtype)
            if d.shape != x_eval.shape:
                raise ValueError(
                    f"denoiser returned shape {d.shape} for input of shape {x_eval.shape}"
                )
            new_d = new_e = None
            if hd:
                new_d = (k % hd, d)
            if he:
                # At sigma = 0 eps_hat is undefined; no plan may use it there, and the
                # safe division keeps the buffer (and its gradient) finite.
                e = safe_div(x_eval - alpha.astype(dtype) * d, sigma.astype(dtype))
                new_e = (k % he, e)
            x = _combine(cu, x, D, E, z, dtype, new_d, new_e)
            Dh, Eh = _pending(D, new_d), _pending(E, new_e)
            if hook is not None:
                hk = jax.random.fold_in(key, -1 - k)
                hs, x, D, E = hook(hs, k, t, x, _settled(Dh), _settled(Eh), d, hk)
                # the hook may reorder rows, the newest entry's too: keep its version
                Dh = _pending(D, new_d and (new_d[0], D[new_d[0]]))
                Eh = _pending(E, new_e and (new_e[0], E[new_e[0]]))
            if check:
                bad = _first_bad(bad, k, jnp.all(jnp.isfinite(x)), jnp.all(jnp.isfinite(d)))
            return ((x, Dh, Eh, hs, ds), bad), (x.astype(model_dtype) if return_trajectory
                                              else None)

        return body

    segments = _segments(denoiser, K)
    ds0 = tuple(den.init_state(x_T.astype(model_dtype)) if _is_stateful(den) else None
                for den, _, _ in segments)
    carry = ((x_T, D0, E0, None if hook is None else hook.init(x_T), ds0),
             jnp.array([-1, 0], jnp.int32) if check else None)
    trajs = []
    slots = (jnp.arange(K), plan.t, plan.alpha, plan.sigma, plan.evaluate, plan.update)
    for i, (den, a, b) in enumerate(segments):
        part = jax.tree.map(lambda v: v[a:b], slots)
        carry, traj = jax.lax.scan(make_body(den, i), carry, part)
        trajs.append(traj)
    (x, Dh, Eh, hs, _), bad = carry
    out = _combine(plan.final, x, Dh.buf, Eh.buf, drawn(K, plan.final), dtype, _newest(Dh),
                   _newest(Eh))
    if check:
        hit = (bad[0] < 0) & ~jnp.all(jnp.isfinite(out))
        bad = jnp.where(hit, jnp.array([K - 1, 3], jnp.int32), bad)
        jax.debug.callback(_raise_if_bad, bad, plan.t, jnp.all(jnp.isfinite(x_T)))
    result = (out.astype(model_dtype),)
    if return_trajectory:
        result += (jnp.concatenate(trajs) if len(trajs) > 1 else trajs[0],)
    if hook is not None:
        result += (hs,)
    return result[0] if len(result) == 1 else result
