"""Error against NFE of every registered solver on the 64-dimensional Gaussian mixture.

On ``builtin("gmm64")`` (8 anisotropic Gaussians in 64 dimensions, VP-linear from
``t = 1`` to ``t = 1e-3``, exact denoiser) every solver of
:data:`samplax.solvers.registry.SOLVERS` samples ``--n`` held-out initial noises at
each NFE budget; its samples are compared with the float64 diffrax reference
solution of the probability-flow ODE from the same noises
(:func:`samplax.models.reference_solve`, Dopri8, rtol = atol = 1e-10). Each cell
gives the median per-sample RMSE and the share of samples that end in another
mixture component than their reference (:func:`samplax.metrics.error_summary`).

* Table 1: the logSNR-uniform step schedule.
* Table 2: per solver and NFE, the best step schedule of ``--schedules`` (default:
  every entry of :data:`samplax.solvers.registry.STEP_SCHEDULES`), by median RMSE on
  the same held-out noises (so in the hand-made solvers' favour).

A solver that cannot spend an NFE exactly (e.g. Heun: 2N - 1) shows "—". The
held-out noises are those of ``samplax.search.objective.make_teacher(seed=0)``'s
evaluation split, which a schedule search never sees, so the numbers compare
directly with ``benchmarks/search.py``.

Run: ``python benchmarks/quality.py [--n 512] [--nfe 4 5 6 8 10 15 20]
[--solvers ddim dpm_solver_pp_2m ...] [--schedules logsnr karras ...]``
(float64, a few CPU minutes: one jitted sampler, compiled once per plan structure).

Per-sample error against the ODE's solution does not apply to stochastic samplers
(their samples are not meant to follow the ODE); ``--distribution`` runs instead the
distribution table of :mod:`stochastic` (Fréchet distance and MMD against exact
samples, with the noise floor), also available as ``python benchmarks/stochastic.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from samplax.metrics import error_summary  # noqa: E402
from samplax.models import reference_solve  # noqa: E402
from samplax.models.builtin import builtin  # noqa: E402
from samplax.solvers._common import reaches_zero_noise  # noqa: E402
from samplax.solvers.executor import sample  # noqa: E402
from samplax.solvers.registry import SOLVERS, STEP_SCHEDULES, steps_for_nfe  # noqa: E402

NFES = (4, 5, 6, 8, 10, 15, 20)
DASH = "—"


def held_out_noises(problem, n: int, seed: int = 0):
    """The evaluation noises of ``make_teacher(seed=seed)`` (disjoint from its
    calibration noises, which drive a search)."""
    _, k_eval = jax.random.split(jax.random.key(seed))
    return problem.x_T(k_eval, n)


def reference(problem, x_T, batch: int = 512):
    """Final states of the float64 diffrax reference from ``x_T``."""
    ts = jnp.array([problem.t_start, problem.t_end])
    solve = jax.jit(lambda x: reference_solve(problem.denoiser, problem.schedule, x, ts)[-1])
    return jnp.concatenate([solve(x_T[i:i + batch]) for i in range(0, x_T.shape[0], batch)])


def evaluate(problem, x_T, ref, solvers, nfes, schedules) -> dict:
    """``{(solver, nfe, schedule): summary}``; ``None`` where the NFE is infeasible,
    an error string where the plan could not be built."""
    den = problem.denoiser
    # One jitted sampler: jit compiles it once per plan structure (NFE and buffer
    # sizes); plans that differ in times (step schedules) reuse the compilation.
    run = jax.jit(lambda plan, x: sample(den, plan, x))
    out = {}
    for name in solvers:
        spec = SOLVERS[name]
        for nfe in nfes:
            try:
                n = steps_for_nfe(spec, nfe, reaches_zero_noise(problem.schedule, problem.t_end))
            except ValueError:
                for s in schedules:
                    out[name, nfe, s] = None
                continue
            for s in schedules:
                ts = STEP_SCHEDULES[s](problem.schedule, n, problem.t_start, problem.t_end)
                try:
                    plan = spec.build(problem.schedule, ts)
                except ValueError as err:
                    out[name, nfe, s] = f"error: {err}"
                    continue
                assert plan.nfe == nfe, (name, nfe, plan.nfe)
                out[name, nfe, s] = error_summary(run(plan, x_T), ref, problem.data)
    return out


def _cell(res) -> str:
    if res is None:
        return DASH
    if isinstance(res, str):
        return "error"
    med, wrong = res["median_rmse"], res["wrong_component"]
    if not np.isfinite(med):
        return "nan"
    return f"{med:.2e} / {100 * wrong:.1f}%"


def _best(results, name, nfe, schedules):
    cands = [(results[name, nfe, s], s) for s in schedules]
    cands = [(r, s) for r, s in cands if isinstance(r, dict) and np.isfinite(r["median_rmse"])]
    if not cands:
        return None, None
    return min(cands, key=lambda c: c[0]["median_rmse"])


def tables(results, solvers, nfes, schedules) -> str:
    head = "| solver | " + " | ".join(f"NFE {k}" for k in nfes) + " |"
    rule = "|---|" + "---:|" * len(nfes)
    lines = ["### logSNR-uniform steps: median RMSE / wrong component", "", head, rule]
    for name in solvers:
        lines.append(f"| {name} | " + " | ".join(_cell(results[name, k, "logsnr"])
                                                 for k in nfes) + " |")
    lines += ["", f"### Best step schedule of {{{', '.join(schedules)}}}: "
              "median RMSE / wrong component, schedule", "", head, rule]
    for name in solvers:
        cells = []
        for k in nfes:
            res, s = _best(results, name, k, schedules)
            cells.append(_cell(results[name, k, schedules[0]]) if res is None
                         else f"{_cell(res)} {s}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    errors = sorted({f"{n} NFE {k} {s}: {r}" for (n, k, s), r in results.items()
                     if isinstance(r, str)})
    if errors:
        lines += ["", "Plans that could not be built:", *[f"- {e}" for e in errors]]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="number of held-out noises")
    ap.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--schedules", nargs="+", default=list(STEP_SCHEDULES),
                    choices=list(STEP_SCHEDULES))
    ap.add_argument("--distribution", action="store_true",
                    help="print the stochastic samplers' distribution table instead")
    args = ap.parse_args(argv)
    if args.distribution:
        import stochastic  # benchmarks/stochastic.py, beside this script

        return stochastic.main([])
    schedules = list(dict.fromkeys(["logsnr", *args.schedules]))  # table 1 needs logsnr

    problem = builtin("gmm64")
    t0 = time.perf_counter()
    x_T = held_out_noises(problem, args.n)
    ref = reference(problem, x_T)
    t1 = time.perf_counter()
    results = evaluate(problem, x_T, ref, args.solvers, args.nfe, schedules)
    t2 = time.perf_counter()

    print(f"gmm64 (64-d, 8 components, VP-linear, t = 1 -> 1e-3), {args.n} held-out noises, "
          f"float64; reference: diffrax Dopri8, rtol = atol = 1e-10")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform} ({os.cpu_count()} cores); "
          f"reference {t1 - t0:.0f} s, solvers {t2 - t1:.0f} s wall")
    print("Cells: median per-sample RMSE / share of samples in the wrong mixture component; "
          f"{DASH} = the solver cannot spend exactly this NFE.")
    print()
    print(tables(results, args.solvers, args.nfe, schedules))


if __name__ == "__main__":
    main()
