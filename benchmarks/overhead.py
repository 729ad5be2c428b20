"""Executor overhead: one jitted ``sample`` call against NFE bare model calls.

For a small MLP denoiser (flax.linen, random weights: timings do not depend on
them) and batch sizes 1, 64, 1024, prints

* ``scan / loop``: time of ``jit(sample)`` over the time of one jitted program
  that calls the model NFE times in a ``fori_loop`` (the pure compute floor);
* ``scan / calls``: over NFE separately dispatched jitted model calls (what a
  Python sampling loop pays).

Run: ``python benchmarks/overhead.py [--nfe 10] [--repeats 50]``. Both
measurements alternate in one run, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import samplax
from samplax.schedules import VPLinear


class MLPDenoiser(nn.Module):
    dim: int = 64
    width: int = 256
    depth: int = 3

    @nn.compact
    def __call__(self, x, t):
        temb = jnp.stack([jnp.sin(t * 10.0), jnp.cos(t * 10.0)])
        h = jnp.concatenate([x, jnp.broadcast_to(temb, x.shape[:-1] + (2,))], axis=-1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(self.dim)(h)


def _time(fns, repeats):
    """Best-of-``repeats`` wall time of each function, measured round-robin."""
    for fn in fns:
        fn().block_until_ready()  # compile and warm up
    best = [np.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn().block_until_ready()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def run(nfe: int, repeats: int, batches=(1, 64, 1024), solver=None):
    schedule = VPLinear()
    model = MLPDenoiser()
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)), jnp.zeros(()))
    den = lambda x, t: model.apply(params, x, t)
    solver = solver or (lambda s, ts: samplax.dpm_solver_pp(s, ts, order=2))
    plan = solver(schedule, jnp.linspace(1.0, 1e-3, nfe + 1))
    rows = []
    for batch in batches:
        x = jax.random.normal(jax.random.key(1), (batch, 64))
        sampler = jax.jit(lambda p, x: samplax.sample(den, p, x))
        one_call = jax.jit(den)
        loop = jax.jit(
            lambda x: jax.lax.fori_loop(0, nfe, lambda i, y: den(y, 0.5 + 0.0 * i), x)
        )

        def calls(x=x):
            y = x
            for _ in range(nfe):
                y = one_call(y, 0.5)
            return y

        t_scan, t_loop, t_calls = _time([lambda: sampler(plan, x), lambda: loop(x), calls],
                                        repeats)
        rows.append((batch, t_scan, t_loop, t_calls))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    rows = run(args.nfe, args.repeats)
    print(f"DPM-Solver++(2M), NFE {args.nfe}, MLP 64-256x3-64, {jax.devices()[0].platform}")
    print("| batch | sample (ms) | fori_loop of NFE calls (ms) | NFE jitted calls (ms) "
          "| scan / loop | scan / calls |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, ts, tl, tc in rows:
        print(f"| {b} | {ts * 1e3:.3f} | {tl * 1e3:.3f} | {tc * 1e3:.3f} | {ts / tl:.2f} "
              f"| {ts / tc:.2f} |")


if __name__ == "__main__":
    main()
