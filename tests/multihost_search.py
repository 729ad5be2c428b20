"""One process of a search under ``jax.distributed`` (or alone), for tests/test_devices.py
and as a template for a multi-host launch.

Run ``python tests/multihost_search.py OUT [--processes N --process-id I --port P]``
once per process (N of them, I = 0 .. N-1, the same P); each splits the network calls
over every process's devices and writes its result to ``OUT.I.json``; process 0 alone
writes the checkpoint ``OUT.ckpt.json``. Without ``--processes`` it runs alone.
On a GPU or TPU cluster, give ``jax.distributed.initialize`` the coordinator's
address (or nothing, where the cluster sets it: Slurm, TPU pods) instead.
"""

import argparse
import json

import jax


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--port", type=int, default=12355)
    args = ap.parse_args()
    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.processes, process_id=args.process_id)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from samplax.models import gaussian
    from samplax.schedules import VPLinear
    from samplax.search import (
        OutputFit,
        Population,
        SearchConfig,
        make_teacher,
        search,
    )

    schedule = VPLinear()
    data = gaussian(jnp.array([0.5, -0.3, 1.0]), jnp.array([0.3, 1.0, 0.6]) ** 2)
    config = SearchConfig(phases=(Population(size=4, generations=1, elites=1,
                                             refine_iters=3), OutputFit()))
    den = data.denoiser(schedule)
    teacher = make_teacher(den, schedule, lambda k, m: jax.random.normal(k, (m, 3)),
                           1.0, 1e-3, n_cal=13, n_eval=21)
    result = search(den, schedule, 3, teacher, t_start=1.0, t_end=1e-3, config=config,
                    progress=False, checkpoint=f"{args.out}.ckpt.json", resume=False)
    with open(f"{args.out}.{args.process_id}.json", "w") as f:
        json.dump({"processes": jax.process_count(), "devices": result["devices"],
                   "timesteps": result["timesteps"],
                   "heldout": result["objective"]["heldout"]["mean_rmse"],
                   "ref": teacher.ref_cal.tolist()}, f)


if __name__ == "__main__":
    main()
