"""The teacher's own error: float32 and looser float64 solves against the float64 one.

The search's teacher is :func:`samplax.models.reference.reference_solve` (diffrax
Dopri8 with a PID controller). In float64 at ``rtol = atol = 1e-10`` it is exact to
round-off; models without float64 (TPUs, bfloat16 networks) need a float32 teacher,
and a cheaper one serves small budgets. This prints, per model, each solve's
evaluations per batch and its per-sample RMSE against the float64 1e-10 solve of the
same noises (median, 99th percentile, max). The float32 rows run with x64 off, as on a
device without float64 (the model in float32 too).

Run: ``python benchmarks/teacher.py --model gmm64 digits`` (about 2 minutes on 2 CPU
cores).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from samplax.cli import load_problem
from samplax.models.reference import reference_solve

SOLVES = (("float64", 1e-10), ("float64", 1e-6), ("float64", 1e-5),
          ("float32", 1e-7), ("float32", 1e-6), ("float32", 1e-5), ("float32", 1e-4))


def solve(model: str, x: np.ndarray, dtype: str, rtol: float):
    """``(final states as float64, evaluations per batch, seconds)``."""
    with jax.enable_x64(dtype == "float64"):
        p = load_problem(model)
        ts = jnp.array([p.t_start, p.t_end])
        run = jax.jit(lambda x: reference_solve(p.denoiser, p.schedule, x, ts, rtol=rtol,
                                                return_evaluations=True))
        xs = jnp.asarray(x, dtype)
        jax.block_until_ready(run(xs))
        t0 = time.perf_counter()
        ys, calls = jax.block_until_ready(run(xs))
        return np.asarray(ys[-1], np.float64), int(calls), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["gmm64", "digits"])
    ap.add_argument("--n", type=int, default=512, help="noises")
    args = ap.parse_args(argv)
    print("| model | dtype | rtol | evaluations | median RMSE | p99 | max | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.model:
        with jax.enable_x64(True):
            p = load_problem(model)
            x = np.asarray(p.x_T(jax.random.key(2026), args.n, jnp.float64))
        ref = None
        for dtype, rtol in SOLVES:
            y, calls, sec = solve(model, x, dtype, rtol)
            if ref is None:
                ref = y
            e = np.sqrt(np.mean((y - ref) ** 2, axis=-1))
            print(f"| {model} | {dtype} | {rtol:g} | {calls} | {np.median(e):.1e} | "
                  f"{np.quantile(e, 0.99):.1e} | {e.max():.1e} | {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
