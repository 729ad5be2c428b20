"""Population evaluation and gradient refinement, compiled once per plan structure.

Candidates of one structure (number of steps, AFS) are stacked into
:class:`Params` (continuous parameters) and :class:`~samplax.solvers.usf.Choices`
(per-step choices as one-hot arrays). :func:`usf_weighted` turns any of them
into a plan inside one program, so a whole population is evaluated with one
``vmap`` and refined with Adam (``optax``) in one ``lax.scan``, without
recompiling when the choices change.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from samplax.optimize import cosine_to, make_minimizer
from samplax.search.objective import mean_rmse, teacher_states
from samplax.search.space import candidate_times, times_from_theta
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
            ts, model_times = candidate_times(schedule, params, afs, t_start, t_end)
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
        self.batch_loss = population_map(loss, x.shape[0])
        self._minimizers = {}

    def refine(self, params: Params, choices: Choices, *, iters: int, lr: float,
               free=("theta", "coefficients", "shift"), lr_end: float | None = None):
        """Adam on a stacked population; returns refined params and their losses.

        Parameters not in ``free`` are held fixed. Each candidate keeps the best
        iterate it visited (:func:`samplax.optimize.make_minimizer`), so
        refinement never returns a worse candidate; one compiled step serves every
        iteration count, learning rate and population size of this structure.
        ``lr_end``: decay the learning rate from ``lr`` to ``lr_end`` along a half
        cosine (``optax.cosine_decay_schedule``); default: constant ``lr``.
        """
        free = tuple(sorted(free))
        if free not in self._minimizers:
            mask = Params(*(name in free for name in Params._fields))
            self._minimizers[free] = make_minimizer(self.loss, mask=mask, batched=True)
        out = self._minimizers[free].run(params, choices, iters=iters,
                                         lr=cosine_to(lr, lr_end, iters))
        return out.params, out.loss


# CPU: sample rows (candidates x noises) per chunk of a population's evaluation; chunks
# of 256-1024 rows were 1.2-2.9x faster than one vmap over every candidate at 32-128
# noises and 16-48 candidates on gmm64 (one vmap of 6144 rows leaves the caches), and
# as fast at 512 rows or fewer (benchmarks/RESULTS.md, issue 24).
CPU_CHUNK_ROWS = 512


def population_map(fn, n_rows: int, backend: str | None = None):
    """``fn`` over a stacked population (leading axis of every argument), jitted.

    On accelerators one ``vmap`` over every candidate: the candidates' small batches
    become one large one, which is what fills a GPU or TPU. On CPU ``lax.map`` over
    chunks of about :data:`CPU_CHUNK_ROWS` sample rows (``n_rows`` noises each), each
    chunk a ``vmap``: as fast at small populations, up to 2.9x faster at large ones.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return jax.jit(jax.vmap(fn))
    chunk = max(1, CPU_CHUNK_ROWS // max(int(n_rows), 1))
    return jax.jit(lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=chunk))


def stack(items):
    """Stack a list of pytrees along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *items)


_EVALUATORS: dict = {}


def evaluator_for(denoiser, schedule, n: int, afs: bool, t_start, t_end, teacher, metric=None,
                  trajectory_weight: float = 0.0) -> Evaluator:
    """An :class:`Evaluator` of one structure on the teacher's calibration noises,
    reused across calls on the same objects (a resumed search, the next phase): its
    compiled programs are the costly part. Keyed by identity, a handful kept."""
    key = (id(denoiser), id(schedule), n, afs, float(t_start), float(t_end),
           id(teacher.x_cal), id(teacher.ref_cal), id(metric), float(trajectory_weight),
           id(teacher.traj_cal))
    if key not in _EVALUATORS:
        if len(_EVALUATORS) >= 8:
            _EVALUATORS.pop(next(iter(_EVALUATORS)))
        # the keyed objects stay alive with the evaluator, so their ids stay unique
        _EVALUATORS[key] = (Evaluator(denoiser, schedule, n, afs, t_start, t_end,
                                      teacher.x_cal, teacher.ref_cal, metric,
                                      (teacher, trajectory_weight) if trajectory_weight
                                      else None),
                            (denoiser, schedule, teacher, metric))
    return _EVALUATORS[key][0]
