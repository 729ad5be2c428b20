"""Population evaluation and gradient refinement, compiled once per plan structure.

Candidates of one structure (number of steps, AFS) are stacked into
:class:`Params` (continuous parameters) and :class:`~samplax.solvers.usf.Choices`
(per-step choices as one-hot arrays). :func:`usf_weighted` turns any of them
into a plan inside one program, so a whole population is evaluated with one
``vmap`` and refined with Adam (``optax``) in one ``lax.scan``, without
recompiling when the choices change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samplax.search.objective import mean_rmse, teacher_states
from samplax.search.space import times_from_theta
from samplax.solvers.executor import sample
from samplax.solvers.usf import MAX_ORDER, Choices, usf_weighted


class Params(NamedTuple):
    """Continuous parameters of a candidate (leading population axis when stacked)."""

    theta: jax.Array  # [n] log-SNR increment logits
    coefficients: jax.Array  # [n, MAX_ORDER - 1] free coefficients
    shift: jax.Array  # [nfe] network-time offsets in lam

    @classmethod
    def zeros(cls, n: int, afs: bool, dtype=None) -> Params:
        dtype = dtype or jnp.result_type(float)
        nfe = n - int(afs)
        return cls(jnp.zeros(n, dtype), jnp.zeros((n, MAX_ORDER - 1), dtype),
                   jnp.zeros(nfe, dtype))


def trajectory_error(teacher, schedule, traj, ts, afs: bool):
    """Mean per-sample RMSE of a USF plan's intermediate states against the teacher.

    ``traj`` is ``sample(..., return_trajectory=True)``'s ``[K, n, *F]`` anchors after
    each slot; for a USF plan (:func:`samplax.solvers.usf.usf`) the anchor after slot
    ``k < K - 1`` is its state at ``ts[k + afs]`` (the anchor is updated when the next
    evaluation opens a slot; tests/test_search_trajectory.py checks the alignment),
    compared with :func:`samplax.search.objective.teacher_states` there; the state at
    ``ts[0]`` (the noise itself) and the final one (the final objective) are left out.
    """
    a = int(afs)
    terms = [mean_rmse(traj[k], teacher_states(teacher, schedule, ts[k + a]))
             for k in range(traj.shape[0] - 1) if k + a > 0]
    if not terms:
        return jnp.zeros((), traj.dtype)
    return sum(terms) / len(terms)


class Evaluator:
    """Loss, batched loss and batched refinement for plans of one structure.

    Args:
        denoiser, schedule: the model.
        n_steps, afs: the structure (NFE = ``n_steps - afs``).
        t_start, t_end: fixed ends of the times.
        x, ref: calibration noises and the teacher's final samples.
        metric: ``metric(samples, ref) -> scalar`` to minimize instead of the mean
            per-sample RMSE (:func:`samplax.search.objective.resolve_metric`).
        trajectory: ``(teacher, weight)``: add ``weight`` times the mean per-sample
            RMSE of the intermediate states (:func:`trajectory_error`) against the
            teacher's trajectories of ``x`` (``make_teacher(n_grid=...)``).
        free: which continuous parameters may move in refinement: a subset of
            ``{"theta", "coefficients", "shift"}``.
    """

    def __init__(self, denoiser, schedule, n_steps: int, afs: bool, t_start, t_end, x, ref,
                 metric=None, trajectory=None):
        self.schedule = schedule
        self.n_steps, self.afs = n_steps, afs
        self.t_start, self.t_end = t_start, t_end

        def plan(params: Params, choices: Choices):
            ts = times_from_theta(schedule, params.theta, t_start, t_end)
            eval_ts = ts[1:-1] if afs else ts[:-1]
            model_times = schedule.t_of_lam(schedule.lam(eval_ts) + params.shift)
            return usf_weighted(schedule, ts, choices, afs=afs,
                                coefficients=params.coefficients, model_times=model_times)

        def loss(params: Params, choices: Choices):
            pl = plan(params, choices)
            if trajectory is None:
                out = sample(denoiser, pl, x)
            else:
                out, traj = sample(denoiser, pl, x, return_trajectory=True)
            value = (metric or mean_rmse)(out, ref)
            if trajectory is not None:
                ts = times_from_theta(schedule, params.theta, t_start, t_end)
                value = value + trajectory[1] * trajectory_error(
                    trajectory[0], schedule, traj, ts, afs)
            return value

        self.plan = plan
        self.loss = loss
        self.batch_loss = jax.jit(jax.vmap(loss))
        self._refiners = {}

    def refine(self, params: Params, choices: Choices, *, iters: int, lr: float,
               free=("theta", "coefficients", "shift"), lr_end: float | None = None):
        """Adam on a stacked population; returns refined params and their losses.

        Parameters not in ``free`` are held fixed. Each candidate keeps the best
        iterate it visited, so refinement never returns a worse candidate. One
        jitted, vmapped Adam step serves every iteration count, learning rate and
        population size of this structure (a Python loop drives it). ``lr_end``:
        decay the learning rate from ``lr`` to ``lr_end`` along a half cosine
        (``optax.cosine_decay_schedule``'s shape); default: constant ``lr``.
        """
        free = tuple(sorted(free))
        if free not in self._refiners:
            mask = Params(*(name in free for name in Params._fields))
            self._refiners[free] = make_refiner(self.loss, mask)
        return run_refiner(self._refiners[free], params, choices, iters=iters, lr=lr,
                           lr_end=lr_end)


class _RefineState(NamedTuple):
    params: Any
    opt_state: optax.OptState
    best: Any
    best_loss: jax.Array


def make_refiner(loss, mask=None):
    """Jitted, vmapped Adam ``(init, step)`` for ``loss(params, aux) -> scalar``.

    ``mask``: a pytree of bools of ``params``' structure; ``False`` leaves are held
    fixed (default: all free). A non-finite loss or gradient leaves a candidate
    where it was; each candidate tracks the best iterate it visited.
    """
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    vg = jax.value_and_grad(loss)

    def init(params, aux, lr):
        state = opt.init(params)
        state.hyperparams["learning_rate"] = lr
        return _RefineState(params, state, params, loss(params, aux))

    def step(st: _RefineState, aux):
        v, g = vg(st.params, aux)
        finite = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(g)]
        ok = jnp.isfinite(v) & jnp.all(jnp.stack(finite))
        better = ok & (v < st.best_loss)
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), st.params, st.best)
        best_loss = jnp.where(better, v, st.best_loss)
        if mask is not None:
            g = jax.tree.map(lambda gi, m: gi if m else jnp.zeros_like(gi), g, mask)
        g = jax.tree.map(lambda a: jnp.where(ok, a, jnp.zeros_like(a)), g)
        upd, opt_state = opt.update(g, st.opt_state, st.params)
        return _RefineState(optax.apply_updates(st.params, upd), opt_state, best, best_loss)

    return jax.jit(jax.vmap(init)), jax.jit(jax.vmap(step))


def run_refiner(refiner, params, aux, *, iters: int, lr: float, lr_end: float | None = None):
    """Drive a :func:`make_refiner` pair over a stacked population for ``iters`` steps;
    returns the best parameters each candidate visited and their losses."""
    init, step = refiner
    n = jax.tree.leaves(params)[0].shape[0]
    dtype = jax.tree.leaves(params)[0].dtype
    state = init(params, aux, jnp.full((n,), lr, dtype))
    schedule = None
    if lr_end is not None:
        schedule = optax.cosine_decay_schedule(lr, max(iters - 1, 1), alpha=lr_end / lr)
    for k in range(iters):
        if schedule is not None:
            # a new value, not a new shape: the jitted step is not retraced
            state.opt_state.hyperparams["learning_rate"] = jnp.full((n,), schedule(k), dtype)
        state = step(state, aux)
    return state.best, state.best_loss


def stack(items):
    """Stack a list of pytrees along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *items)


def unstack(tree, i: int):
    return jax.tree.map(lambda a: a[i], tree)
