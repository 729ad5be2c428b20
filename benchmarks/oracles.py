"""How far a saved schedule is from what its network evaluations could give at best.

Two oracles, each told the teacher's answer for every held-out sample, bound what a
sampler could do with a searched plan's evaluations if its scalar weights, or its
network times, were chosen for each sample (a plan's are the same for every sample,
so with the same evaluations its scalar output combination cannot beat the first
oracle; per-coordinate weights are another family, not bounded by it).

* **Final combination.** The plan runs unchanged; then, per sample, the least-squares
  combination of its sample, the initial noise ``x_T``, its ``K`` data predictions
  ``D_1..D_K`` and a constant that comes closest to the teacher's answer (``K + 3``
  unknowns per sample, chosen knowing that answer). What is left is beyond every
  scalar weighting of what the network returned, even a sample-dependent one.
* **Network times.** Per sample, ``K`` offsets in ``lam`` of the plan's network times,
  fitted by Adam to that sample's own error (coefficients unchanged). Then, per slot,
  the share of the offsets' variance (R^2) that a least-squares fit explains from the
  statistics a sample-dependent time rule such as time-shift sampling (Li et al.
  2024) can read before the evaluation: the log mean square of the anchor and of the
  newest data prediction.

Run: ``python benchmarks/oracles.py --model digits --nfe 8 10`` (reads
``benchmarks/results/search_<model>_nfe<N>.json``; about a minute per NFE on 2 CPU
cores). The held-out noises are ``make_teacher(seed=0)``'s evaluation split, as in
``benchmarks/search.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from samplax.cli import load_problem  # noqa: E402
from samplax.metrics import per_sample_rmse  # noqa: E402
from samplax.search import load_result, make_teacher  # noqa: E402
from samplax.search.result import plan_from_result  # noqa: E402
from samplax.solvers.executor import sample  # noqa: E402


class Recorder:
    """A slot hook that keeps every data prediction and anchor of the run."""

    def __init__(self, nfe: int):
        self.nfe = nfe

    def init(self, x_T):
        return jnp.zeros((self.nfe,) + x_T.shape, x_T.dtype), jnp.zeros(
            (self.nfe,) + x_T.shape, x_T.dtype)

    def __call__(self, state, k, t, x, D, E, d, key):
        outs, anchors = state
        return (outs.at[k].set(d), anchors.at[k].set(x)), x, D, E


def run_recorded(denoiser, plan, x_T):
    """``(sample, data predictions [K, n, dim], anchors [K, n, dim])``, all in the
    plan's coordinates (its basis, if it has one; norms do not depend on it)."""
    B = plan.basis
    if B is not None:
        den = lambda z, t: denoiser(z @ B.T, t) @ B  # noqa: E731
        plan, x_T = plan._replace(basis=None), x_T @ B
    else:
        den = denoiser
    y, (outs, anchors) = sample(den, plan, x_T, jax.random.key(0), hook=Recorder(plan.nfe))
    return y, outs, anchors, x_T


def final_combination_oracle(y, outs, z0, ref):
    """Per-sample RMSE of the best combination of ``y, x_T, D_1..D_K, 1`` for each
    sample, and the share of the residual's energy it removes."""
    V = jnp.concatenate([y[None], z0[None], outs, jnp.ones_like(y)[None]])  # [M, n, dim]

    def one(v, r):
        c, *_ = jnp.linalg.lstsq(v.T, r)
        return v.T @ c

    fit = jax.vmap(one, in_axes=(1, 0))(V, ref)
    removed = jnp.sum((fit - y) ** 2, -1) / jnp.sum((ref - y) ** 2, -1)
    return per_sample_rmse(fit, ref), float(jnp.mean(removed)), V.shape[0]


def network_time_oracle(denoiser, schedule, plan, x, ref, *, steps=300, lr=0.01):
    """Per-sample ``lam`` offsets of the network times fitted to each sample's own
    log RMSE, the best of ``steps`` Adam iterates: ``(per-sample RMSE, offsets [n, K])``."""
    lam0 = schedule.lam(plan.t)

    def loss(dl, xi, ri):
        y = sample(denoiser, plan._replace(t=schedule.t_of_lam(lam0 + dl)), xi[None])[0]
        return jnp.log(per_sample_rmse(y[None], ri[None])[0])

    opt = optax.adam(lr)
    grad = jax.vmap(jax.value_and_grad(loss))

    @jax.jit
    def step(dl, state):
        value, g = grad(dl, x, ref)
        upd, state = opt.update(g, state, dl)
        return optax.apply_updates(dl, upd), state, value

    dl = jnp.zeros((x.shape[0], plan.nfe), x.dtype)
    state = opt.init(dl)
    best, best_dl = jnp.full(x.shape[0], jnp.inf, x.dtype), dl
    for _ in range(steps + 1):
        # value is that of dl before the step: keep each sample's best iterate, so the
        # oracle is never worse than the plan itself (the zero offsets)
        new, state, value = step(dl, state)
        better = value < best
        best, best_dl = jnp.where(better, value, best), jnp.where(better[:, None], dl, best_dl)
        dl = new
    return jnp.exp(best), np.asarray(best_dl)


def predictability(dl, outs, anchors, z0):
    """Per slot, R^2 of a least-squares fit of the offsets on the log mean squares of
    the anchor and of the newest data prediction before that slot."""
    outs, anchors, z0 = np.asarray(outs), np.asarray(anchors), np.asarray(z0)
    r2 = []
    for k in range(dl.shape[1]):
        seen = [z0] if k == 0 else [anchors[k - 1], outs[k - 1]]
        F = np.stack([np.log(np.mean(v**2, -1)) for v in seen] + [np.ones(dl.shape[0])], 1)
        c, *_ = np.linalg.lstsq(F, dl[:, k], rcond=None)
        r2.append(1.0 - np.var(dl[:, k] - F @ c) / np.var(dl[:, k]))
    return np.array(r2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--nfe", type=int, nargs="+", default=[8, 10])
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    p = load_problem(args.model)
    teacher = make_teacher(p.denoiser, p.schedule, p.x_T, p.t_start, p.t_end, n_cal=4,
                           n_eval=args.n_eval)
    x, ref = teacher.x_eval, teacher.ref_eval
    print(f"{args.model}: held-out median RMSE / best hand-made's, {args.n_eval} noises")
    print("| NFE | best hand-made | plan | oracle: final combination (residual energy "
          "removed) | oracle: network times | offsets' sd in lam | R^2 per slot |")
    print("|---:|---|---|---|---|---|---|")
    for nfe in args.nfe:
        res = load_result(Path(args.results) / f"search_{args.model}_nfe{nfe}.json")
        best = res["baselines"]["best"]["median_rmse"]
        plan = plan_from_result(res, p.schedule)
        y, outs, anchors, z0 = jax.jit(lambda x_T: run_recorded(p.denoiser, plan, x_T))(x)
        ref_b = ref if plan.basis is None else ref @ plan.basis
        comb, removed, n_vectors = final_combination_oracle(y, outs, z0, ref_b)
        times, dl = network_time_oracle(p.denoiser, p.schedule, plan, x, ref)
        r2 = predictability(dl, outs, anchors, z0)
        cell = lambda e: f"{float(jnp.median(e)):.5f} ({float(jnp.median(e)) / best:.3f})"  # noqa: E731
        print(f"| {nfe} | {best:.5f} | {cell(per_sample_rmse(y, ref_b))} | {cell(comb)} "
              f"({removed:.2f}; chance {n_vectors / y.shape[-1]:.2f}) | {cell(times)} | "
              f"{dl.std(0).min():.3f}-{dl.std(0).max():.3f} | "
              f"{r2.min():.3f}-{r2.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
