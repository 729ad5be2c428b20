"""Executor memory: the temporary buffers of one compiled ``sample`` call, per solver.

XLA's memory analysis of the compiled program (``temp_size_in_bytes``: buffers that
are neither arguments nor outputs) for ``jit(sample)`` at batch ``--batch``,
``d = --dim`` in float32, NFE 10 (or the nearest a solver can spend), with an MLP
denoiser ``d-256-d`` (its own temporaries are ``batch x 256`` floats). The table gives
it in *state copies* (one state = ``batch x d`` floats) against the solver's history
length ``H`` (entries of its data- and noise-prediction buffers), and against NFE bare
model calls in one ``fori_loop``. With ``--baseline REF`` it also compiles the executor of git
revision ``REF`` (``git show REF:samplax/solvers/executor.py``) on the same plans,
and times both round-robin at batch ``--time-batch`` (ratio < 1: faster now).

Run: ``python benchmarks/memory.py [--baseline 5dae22f]`` (2-3 minutes on 2 CPU
cores, more with the timings).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from baseline import load_executor
from overhead import _time

import samplax
from samplax.schedules import EDM, VPLinear, karras
from samplax.solvers.registry import SOLVERS, plan_for_nfe

NFE = 10


def _stochastic_plans():
    vp, edm = VPLinear(), EDM()
    ts = jnp.linspace(1.0, 1e-3, NFE + 1)
    return {
        "ddpm": samplax.ddpm(vp, ts),
        "sde_dpm_solver_pp_2m": samplax.sde_dpm_solver_pp(vp, ts, order=2),
        "sde_dpm_solver_pp_3m": samplax.sde_dpm_solver_pp(vp, ts, order=3),
        "er_sde": samplax.er_sde(vp, ts),
        "sa_solver": samplax.sa_solver(vp, jnp.linspace(1.0, 1e-3, NFE)),
        "restart": samplax.restart(edm, karras(edm, 4, append_zero=True),
                                   [samplax.RestartInterval(0.5, 2.0, 1, 2)]),
    }


def plans():
    """Every registered solver at NFE 10 (VP linear, logSNR steps) and the stochastic ones."""
    out = {}
    for name in SOLVERS:
        for nfe in (NFE, NFE + 1, NFE - 1):  # Heun and the singlestep ones: the nearest
            try:
                out[name] = plan_for_nfe(name, VPLinear(), nfe)
                break
            except ValueError:
                continue
    out.update(_stochastic_plans())
    return out


def _denoiser(dim: int):
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (dim, 256)) / dim**0.5
    w2 = jax.random.normal(k2, (256, dim)) / 16.0
    return lambda x, t: jax.nn.silu(x @ w1 + t) @ w2


def temp_copies(sample_fn, den, plan, x, key) -> float:
    """Temporary bytes of the compiled ``sample_fn(den, plan, x, key)``, in states."""
    fn = jax.jit(lambda x, k: sample_fn(den, plan, x, k))
    memory = fn.lower(x, key).compile().memory_analysis()
    return memory.temp_size_in_bytes / x.nbytes


def bare_copies(den, x) -> float:
    fn = jax.jit(lambda x: jax.lax.fori_loop(0, NFE, lambda i, y: den(y, 0.1 * i), x))
    return fn.lower(x).compile().memory_analysis().temp_size_in_bytes / x.nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
    ap.add_argument("--time-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    den = _denoiser(args.dim)
    x = jnp.zeros((args.batch, args.dim), jnp.float32)
    key = jax.random.key(0)
    old = load_executor(args.baseline) if args.baseline else None
    print(f"batch {args.batch}, d {args.dim}, float32, NFE {NFE}, MLP {args.dim}-256-"
          f"{args.dim}; one state = {x.nbytes / 2**20:.0f} MiB; {jax.devices()[0].platform}")
    print(f"NFE bare model calls (fori_loop): {bare_copies(den, x):.2f} states")
    head = "| solver | H | bound H + 3 | temp (states) |"
    rule = "|---|---:|---:|---:|"
    if old:
        head += f" at {args.baseline} | time now / then (batch {args.time_batch}) |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    xt = jax.random.normal(key, (args.time_batch, args.dim))
    for name, plan in plans().items():
        h = plan.evaluate.d.shape[1] + plan.evaluate.e.shape[1]
        now = temp_copies(samplax.sample, den, plan, x, key)
        row = f"| {name} | {h} | {h + 3} | {now:.2f} |"
        if old:
            then = temp_copies(old, den, plan, x, key)
            new_fn = jax.jit(lambda x, k, p=plan: samplax.sample(den, p, x, k))
            old_fn = jax.jit(lambda x, k, p=plan: old(den, p, x, k))
            t_new, t_old = _time([lambda: new_fn(xt, key), lambda: old_fn(xt, key)],
                                       args.repeats)
            row += f" {then:.2f} | {t_new / t_old:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
