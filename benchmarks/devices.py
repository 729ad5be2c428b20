"""A search on 1, 2, 4 and 8 devices: wall time, per-device memory, same result.

The host CPU is split into 8 XLA devices (``XLA_FLAGS``, set here before JAX starts);
for each device count the teacher and the search of ``builtin("gmm64")`` at NFE 5
(population, refinement and plan fit, shortened) run with ``mesh=N``. Per-device
memory is XLA's analysis of the search's largest program, one generation of the
population (every candidate sampled on the calibration noises), as compiled for N
devices (arguments + temporaries of one device). On this 2-core CPU the wall-time
gain is bounded by its two cores; on a GPU node the devices are real.

Run: ``python benchmarks/devices.py [--n-cal 64]`` (about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from samplax.models.builtin import builtin  # noqa: E402
from samplax.search import (  # noqa: E402
    PlanFit,
    Population,
    Refine,
    SearchConfig,
    make_teacher,
    noise_mesh,
    search,
    spread_denoiser,
)
from samplax.search.population import Params, evaluator_for, stack  # noqa: E402
from samplax.search.space import random_steps  # noqa: E402
from samplax.solvers.usf import Choices  # noqa: E402

NFE = 5


def generation_memory(problem, teacher, mesh, size: int) -> float:
    """MiB per device of one compiled population generation (``size`` candidates)."""
    den = spread_denoiser(problem.denoiser, mesh)
    ev = evaluator_for(den, problem.schedule, NFE, False, problem.t_start, problem.t_end,
                       teacher)
    rng = np.random.default_rng(0)
    steps = [random_steps(rng, NFE) for _ in range(size)]
    params = stack([Params.zeros(NFE, False)] * size)
    choices = stack([Choices.from_steps(s) for s in steps])
    m = ev.batch_loss.lower(params, choices).compile().memory_analysis()
    return (m.argument_size_in_bytes + m.temp_size_in_bytes) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cal", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=256)
    args = ap.parse_args()
    problem = builtin("gmm64")
    pop = Population(size=16, generations=2, elites=2, refine_iters=10)
    config = SearchConfig(phases=(pop, Refine(iters=40, finalists=1), PlanFit(iters=10)))
    print(f"gmm64, NFE {NFE}, {args.n_cal} calibration + {args.n_eval} held-out noises, "
          f"{len(jax.devices())} {jax.devices()[0].platform} devices, float64")
    print("| devices | teacher (s) | search (s) | total (s) | memory per device, one "
          "generation (MiB) | held-out mean RMSE | max time difference to 1 device |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    first = None
    for n in (1, 2, 4, 8):
        t0 = time.perf_counter()
        teacher = make_teacher(problem.denoiser, problem.schedule, problem.x_T,
                               problem.t_start, problem.t_end, n_cal=args.n_cal,
                               n_eval=args.n_eval, rtol=1e-7, mesh=n)
        t1 = time.perf_counter()
        res = search(problem.denoiser, problem.schedule, NFE, teacher,
                     t_start=problem.t_start, t_end=problem.t_end, config=config,
                     progress=False, mesh=n)
        t2 = time.perf_counter()
        ts = np.asarray(res["timesteps"])
        first = ts if first is None else first
        mem = generation_memory(problem, teacher, noise_mesh(n), pop.size)
        print(f"| {n} | {t1 - t0:.1f} | {t2 - t1:.1f} | {t2 - t0:.1f} | {mem:.1f} | "
              f"{res['objective']['heldout']['mean_rmse']:.4e} | "
              f"{np.max(np.abs(ts - first)):.1e} |", flush=True)


if __name__ == "__main__":
    main()
