"""Every registered solver in bfloat16: its error against the same plan in float64.

A bfloat16 user has a bf16 network and a bf16 state. This runs each solver of
:data:`~samplax.solvers.registry.SOLVERS` at NFE 5, 10 and 20 on three noise
schedules (VP linear, EDM, rectified flow), with the step schedule uniform in
logSNR and the last step to ``sigma = 0``, on the 64-d Gaussian mixture of
``--model gmm64`` whose exact denoiser is rounded to bfloat16 (input and output;
it computes in float32 in between, as a bf16 network's float32 accumulators
would). The error of a run is the median over 64 samples of
``||x_bf16 - x_64|| / ||x_64||``, ``x_64`` the same plan from the same noises in
float64, so it measures the arithmetic alone, not the discretization (the median,
because a rounding can move a sample near a boundary between two modes to the
other one, in any solver). The last columns are each solver's worst ratio to DDIM's
error at the same schedule and NFE, and that worst cell's error over the same run
with a float32 state (only the network in bfloat16): near 1 when the state's
arithmetic adds nothing to the network's own rounding.

Run: ``python benchmarks/bf16.py`` (about 12 minutes on 2 CPU cores; every plan
compiles once).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from samplax.models.builtin import builtin  # noqa: E402
from samplax.schedules import EDM, RectifiedFlow, VPLinear  # noqa: E402
from samplax.schedules.steps import uniform_logsnr  # noqa: E402
from samplax.solvers.executor import sample  # noqa: E402
from samplax.solvers.registry import SOLVERS  # noqa: E402

SCHEDULES = {"vp_linear": VPLinear(), "edm": EDM(), "flow": RectifiedFlow()}
NFES = (5, 10, 20)


def to_zero_plan(name, schedule, nfe):
    """Solver ``name`` at ``nfe`` evaluations (or the next feasible count, for solvers
    with two evaluations per step), logSNR-uniform, last step to 0."""
    spec = SOLVERS[name]
    n = next(n for n in range(spec.min_steps, 2 * nfe + 2) if spec.cost(n, True) >= nfe)
    ts = uniform_logsnr(schedule, n, append_zero=True)
    return spec.build(schedule, ts)


def bf16_denoiser(den):
    def D(x, t):  # rounded to bfloat16 on the way in and out, whatever the state
        x = x.astype(jnp.bfloat16).astype(jnp.float32)
        return den(x, t.astype(jnp.float32)).astype(jnp.bfloat16).astype(x.dtype)

    return D


def relative_error(den64, den16, plan, shape, seed: int, state=jnp.bfloat16) -> float:
    x64 = plan.sigma[0] * jax.random.normal(jax.random.key(seed), shape, jnp.float64)
    ref = jax.jit(lambda p, x: sample(den64, p, x))(plan, x64)
    got = jax.jit(lambda p, x: sample(den16, p, x))(plan, x64.astype(state))
    err = jnp.linalg.norm(got.astype(jnp.float64) - ref, axis=-1) / jnp.linalg.norm(ref, axis=-1)
    return float(jnp.median(err))


def errors(solvers, n: int = 64, seed: int = 0):
    """``{(schedule, solver, nfe): (error, its DDIM's error, NFE run)}``; a solver that
    cannot spend ``nfe`` runs at the next feasible count, and DDIM at that count too."""
    data = builtin("gmm64").data
    out = {}
    for sname, schedule in SCHEDULES.items():
        den64 = data.denoiser(schedule)
        den16 = bf16_denoiser(den64)
        ddim = {}
        for name in solvers:
            for nfe in NFES:
                try:
                    plan = to_zero_plan(name, schedule, nfe)
                except ValueError:  # e.g. F-PNDM's warm-up needs more steps to reach 0
                    continue
                if plan.nfe not in ddim:
                    ddim[plan.nfe] = relative_error(den64, den16, to_zero_plan(
                        "ddim", schedule, plan.nfe), (n, data.dim), seed)
                out[sname, name, nfe] = (relative_error(den64, den16, plan, (n, data.dim),
                                                        seed), ddim[plan.nfe], plan.nfe)
    return out


def float32_state_error(sname, name, nfe, n: int = 64, seed: int = 0) -> float:
    """The same run with a float32 state: only the network rounds to bfloat16."""
    data, schedule = builtin("gmm64").data, SCHEDULES[sname]
    den64 = data.denoiser(schedule)
    return relative_error(den64, bf16_denoiser(den64), to_zero_plan(name, schedule, nfe),
                          (n, data.dim), seed, state=jnp.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solvers", nargs="+", default=sorted(SOLVERS))
    args = ap.parse_args(argv)
    solvers = sorted(set(args.solvers) | {"ddim"})
    err = errors(solvers)
    cols = [(s, k) for s in SCHEDULES for k in NFES]
    print("| solver | " + " | ".join(f"{s} {k}" for s, k in cols)
          + " | worst / DDIM | worst / float32 state |")
    print("|---|" + "---:|" * (len(cols) + 2))
    for name in solvers:
        cells = [err.get((s, name, k)) for s, k in cols]
        worst, (ws, wk) = max((c[0] / c[1], sk) for c, sk in zip(cells, cols) if c)
        control = err[ws, name, wk][0] / float32_state_error(ws, name, wk)
        print(f"| {name} | " + " | ".join(
            "n/a" if c is None else f"{c[0]:.2e}" + ("" if c[2] == k else f" ({c[2]})")
            for c, (_, k) in zip(cells, cols)) + f" | {worst:.2f} | {control:.2f} |")
    vals = [e for e, _, _ in err.values()]
    print(f"\nmedian error {np.median(vals):.2e}, max {max(vals):.2e}, "
          f"non-finite runs {sum(not np.isfinite(v) for v in vals)}; (m): the solver's "
          "nearest feasible NFE; n/a: the solver cannot reach sigma = 0 at that NFE; last "
          "column: the worst cell's error over that of the same run with a float32 state "
          "(only the network in bfloat16)")


if __name__ == "__main__":
    main()
