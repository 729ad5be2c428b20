"""Stochastic samplers' cost beyond the network: time against bare model calls, and
compile time, against the deterministic solvers.

For the MLP denoiser of ``overhead.py`` (64-256x3-64, random weights) at batch 1 and
64, each sampler's jitted ``sample`` time over one jitted ``fori_loop`` of the same
number of bare model calls (best of ``--repeats``, round-robin), and the seconds to
compile it (best of three fresh compilations). With ``--baseline REF`` the same plans
also run through the executor of git revision ``REF``, in the same run.

Run: ``python benchmarks/stochastic_overhead.py [--baseline 5dae22f]`` (about 3
minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from baseline import load_executor
from overhead import MLPDenoiser, _time

import samplax
from samplax.schedules import EDM, VPLinear, karras

NFE = 10


def plans():
    vp, edm = VPLinear(), EDM()
    ts = jnp.linspace(1.0, 1e-3, NFE + 1)
    return {
        "DDIM": samplax.ddim(vp, ts),
        "DPM-Solver++(2M)": samplax.dpm_solver_pp(vp, ts, order=2),
        "Heun (EDM)": samplax.heun(edm, karras(edm, 5, append_zero=True)),
        "DDPM": samplax.ddpm(vp, ts),
        "Euler ancestral": samplax.euler_ancestral(vp, ts),
        "SDE-DPM-Solver++(2M)": samplax.sde_dpm_solver_pp(vp, ts, order=2),
        "ER-SDE": samplax.er_sde(vp, ts),
        "EDM stochastic": samplax.edm_stochastic(edm, karras(edm, 5, append_zero=True),
                                                 S_churn=40.0),
        "Restart (Heun)": samplax.restart(edm, karras(edm, 4, append_zero=True),
                                          [samplax.RestartInterval(0.5, 2.0, 1, 2)]),
    }


def compile_seconds(sample_fn, den, plan, x, key, n=3) -> float:
    best = float("inf")
    for _ in range(n):
        fn = jax.jit(lambda x, k: sample_fn(den, plan, x, k))  # a new function: no cache
        t0 = time.perf_counter()
        fn.lower(x, key).compile()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=100)
    args = ap.parse_args()
    model = MLPDenoiser()
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)), jnp.zeros(()))
    den = lambda x, t: model.apply(params, x, t)  # noqa: E731
    key = jax.random.key(2)
    execs = {"now": samplax.sample}
    if args.baseline:
        execs[args.baseline] = load_executor(args.baseline)
    cols = list(execs)
    print(f"MLP 64-256x3-64, float32, {jax.devices()[0].platform}; time / bare = jitted "
          "sample over a fori_loop of as many bare model calls")
    head = "| sampler | NFE |" + "".join(
        f" batch {b} ({c}) |" for b in (1, 64) for c in cols) + "".join(
        f" compile s ({c}) |" for c in cols)
    print(head)
    print("|---|---:|" + "---:|" * (3 * len(cols)))
    for name, plan in plans().items():
        row = f"| {name} | {plan.nfe} |"
        for batch in (1, 64):
            x = jax.random.normal(jax.random.key(1), (batch, 64))
            bare = jax.jit(lambda x, n=plan.nfe: jax.lax.fori_loop(
                0, n, lambda i, y: den(y, 0.5 + 0.0 * i), x))
            fns = [lambda: bare(x)] + [
                (lambda f=jax.jit(lambda x, k, s=s, p=plan: s(den, p, x, k)): f(x, key))
                for s in execs.values()]
            t = _time(fns, args.repeats)
            row += "".join(f" {ti / t[0]:.2f} |" for ti in t[1:])
        x = jnp.zeros((1, 64))
        row += "".join(f" {compile_seconds(s, den, plan, x, key):.2f} |" for s in execs.values())
        print(row, flush=True)


if __name__ == "__main__":
    main()
