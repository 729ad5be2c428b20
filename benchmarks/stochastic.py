"""Distribution quality of the stochastic and plug-in samplers on the 64-d mixture.

On ``builtin("gmm64")`` (8 anisotropic Gaussians in 64 dimensions, VP-linear, from
``t = 1`` to ``t = 1e-3``; exact denoiser) every sampler draws ``--n`` samples from the
same initial noise and key; they are compared with ``--n`` exact samples of the
marginal at ``t = 1e-3`` by

* the Fréchet distance (FD) of fitted Gaussians (FID's formula, on the raw 64-d
  samples), over all ``--n`` samples;
* the unbiased kernel MMD^2 (Gaussian kernel, median-heuristic bandwidth) on the
  first ``--n-mmd`` samples of each set.

The noise floor of each metric is the same metric between two independent exact
sample sets of the same sizes: a sampler cannot be told from exact sampling below
it. NFE budgets 10, 20, 50; where a method's NFE cannot hit a budget exactly
(Heun: 2N, Restart: 2N - 1 + 2K(n - 1)) it uses the largest NFE below and says so.
The ODE references are USF's third-order data-form multistep with its UniC-style
corrector (``usf(Step("data", 3, True))``) and DPM-Solver++(3M). Step schedules
are logSNR-uniform (Karras in the EDM view for EDM's sampler and Restart). The
initial states are exact samples of the marginal at ``t = 1``.

Run: ``python benchmarks/stochastic.py [--n 8192] [--n-mmd 2000]`` (float64, CPU
minutes). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from samplax.metrics import frechet_distance, mmd2  # noqa: E402
from samplax.models import reference_solve  # noqa: E402
from samplax.models.builtin import builtin  # noqa: E402
from samplax.schedules import karras, uniform_logsnr  # noqa: E402
from samplax.solvers.ancestral import ddim_eta, ddpm  # noqa: E402
from samplax.solvers.dc_solver import dc_unipc, fit_dc_ratios  # noqa: E402
from samplax.solvers.dpm_solver_pp import dpm_solver_pp  # noqa: E402
from samplax.solvers.dpm_solver_v3 import compute_ems, dpm_solver_v3  # noqa: E402
from samplax.solvers.edm_sde import edm_stochastic  # noqa: E402
from samplax.solvers.eps_scaling import eps_scaling  # noqa: E402
from samplax.solvers.er_sde import er_sde  # noqa: E402
from samplax.solvers.executor import sample  # noqa: E402
from samplax.solvers.momentum import dpm_solver_pp_hb, ghvb, plms_hb  # noqa: E402
from samplax.solvers.plan import Plan  # noqa: E402
from samplax.solvers.restart import RestartInterval, restart  # noqa: E402
from samplax.solvers.sa_solver import sa_solver  # noqa: E402
from samplax.solvers.sde_dpm_solver import sde_dpm_solver_pp  # noqa: E402
from samplax.solvers.time_shift import time_shift  # noqa: E402
from samplax.solvers.unipc import unipc  # noqa: E402
from samplax.solvers.usf import Step, usf  # noqa: E402

BUDGETS = (10, 20, 50)
PROB = builtin("gmm64")
SCHED = PROB.schedule
T0, T1 = PROB.t_start, PROB.t_end


def _logsnr(n):
    return uniform_logsnr(SCHED, n, t_start=T0, t_end=T1)


def _karras(n):
    return karras(SCHED, n, t_start=T0, t_end=T1)


def _restart(nfe):
    """Main Heun (2N - 1 NFE, Euler last) + K restarts of 2 Heun sub-steps (4 NFE each)
    from the last interior main point ``sigma_j`` up to ``5 sigma_j`` (CIFAR-10's
    [0.14, 0.30] is the same idea at 18 main steps)."""
    n_main, k = {10: (3, 1), 20: (6, 2), 50: (15, 5)}[nfe]
    ts = _karras(n_main)
    s_j = float(SCHED.sigma(ts[-2]) / SCHED.alpha(ts[-2]))
    return restart(SCHED, ts, [RestartInterval(s_j, 5.0 * s_j, k, 3)])


class _Ctx:
    """Things some samplers compute once: v3 statistics, DC ratios per budget."""

    def __init__(self, den):
        self.den = den
        self._ems = None
        self._dc = {}

    def ems(self):
        if self._ems is None:
            x_cal = PROB.x_T(jax.random.key(101), 512)  # disjoint from the test noise
            self._ems = compute_ems(self.den, SCHED, x_cal, n_grid=100, t_start=T0, t_end=T1)
        return self._ems

    def dc(self, nfe):
        if nfe not in self._dc:
            ts = _logsnr(nfe)
            x_cal = PROB.x_T(jax.random.key(102), 32)
            ref = reference_solve(self.den, SCHED, x_cal, ts, rtol=1e-7, atol=1e-7)
            self._dc[nfe], _ = fit_dc_ratios(self.den, SCHED, ts, x_cal, ref, order=3,
                                             steps=40)
        return self._dc[nfe]


def samplers(ctx: _Ctx):
    """name -> (plan for a budget, denoiser transform or None)."""
    den = ctx.den
    return {
        "ODE: USF data-3 + UniC": lambda n: usf(SCHED, _logsnr(n), Step("data", 3, True)),
        "ODE: DPM-Solver++(3M)": lambda n: dpm_solver_pp(SCHED, _logsnr(n), 3),
        "DDPM (ancestral)": lambda n: ddpm(SCHED, _logsnr(n)),
        "DDIM eta=0.5": lambda n: ddim_eta(SCHED, _logsnr(n), 0.5),
        "EDM stochastic Heun (S_churn=30 on [0.01,1])": lambda n: edm_stochastic(
            SCHED, _karras(n // 2), 30.0, 0.01, 1.0, 1.0, final_euler=False),
        "SDE-DPM-Solver++(2M) eta=1": lambda n: sde_dpm_solver_pp(SCHED, _logsnr(n), 2),
        "SDE-DPM-Solver++(3M) eta=1": lambda n: sde_dpm_solver_pp(SCHED, _logsnr(n), 3),
        "SA-Solver (3,4) PEC, default tau": lambda n: sa_solver(SCHED, _logsnr(n)),
        "ER-SDE-Solver-3": lambda n: er_sde(SCHED, _logsnr(n), 3),
        "Restart (Heun, K x [s_j, 5 s_j])": _restart,
        "PLMS + HB (order 4, beta=0.8)": lambda n: plms_hb(SCHED, _logsnr(n), 4, 0.8),
        "GHVB (order 4, beta=0.8)": lambda n: ghvb(SCHED, _logsnr(n), 4, 0.8),
        "DPM-Solver++(2M) + HB beta=0.8": lambda n: dpm_solver_pp_hb(SCHED, _logsnr(n), 0.8),
        "TS-DPM on DPM-Solver++(2M) (w=30, c=0.3)": lambda n: (
            dpm_solver_pp(SCHED, _logsnr(n), 2), time_shift(den, SCHED, 30, 0.3)),
        "Eps scaling 1.005 on DPM-Solver++(2M)": lambda n: (
            dpm_solver_pp(SCHED, _logsnr(n), 2), eps_scaling(den, SCHED, 1.005)),
        "DPM-Solver-v3 (order 2 + corrector)": lambda n: dpm_solver_v3(
            SCHED, _logsnr(n), ctx.ems(), 2),
        "UniPC bh2-3": lambda n: unipc(SCHED, _logsnr(n), 3, "bh2"),
        "DC-Solver on UniPC bh2-3": lambda n: dc_unipc(SCHED, _logsnr(n), ctx.dc(n), 3, "bh2"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--n-mmd", type=int, default=2000)
    args = ap.parse_args(argv)
    den = PROB.denoiser
    # exact samples of the marginal at t = 1: only the sampler's error is measured
    x_T = PROB.data.prior_sample(jax.random.key(0), args.n, SCHED, T0)
    key = jax.random.key(1)
    exact = PROB.data.prior_sample(jax.random.key(2), args.n, SCHED, T1)
    m = args.n_mmd
    floors = [(frechet_distance(exact, e), mmd2(exact[:m], e[:m]))
              for e in (PROB.data.prior_sample(jax.random.key(3 + i), args.n, SCHED, T1)
                        for i in range(4))]
    floor_fd, floor_mmd = np.asarray(floors).T
    run = jax.jit(sample, static_argnums=0)
    ctx = _Ctx(den)
    rows = []
    t_start = time.time()
    for name, make in samplers(ctx).items():
        cells = []
        for nfe in BUDGETS:
            built = make(nfe)
            plan, d = (built, den) if isinstance(built, Plan) else built
            x = run(d, plan, x_T, key)
            fd = frechet_distance(x, exact)
            mm = mmd2(x[:m], exact[:m])
            cells.append((plan.nfe, fd, mm))
        rows.append((name, cells))
        print(f"  done {name} ({time.time() - t_start:.0f} s)", flush=True)
    print()
    print(f"gmm64 (64-d, 8 components), n = {args.n} (MMD on {m}), float64, "
          f"{jax.devices()[0].platform}")
    print(f"Noise floor (the metric between the exact set and 4 other independent exact "
          f"sets of the same size): FD = {floor_fd.mean():.4f} (range {floor_fd.min():.4f}.."
          f"{floor_fd.max():.4f}), MMD^2 = {floor_mmd.mean():.1e} (range "
          f"{floor_mmd.min():.1e}..{floor_mmd.max():.1e})")
    print()
    head = " | ".join(f"FD @{b} | MMD^2 @{b}" for b in BUDGETS)
    print(f"| sampler | {head} |")
    print("|---|" + "---:|" * (2 * len(BUDGETS)))
    for name, cells in rows:
        parts = []
        for b, (nfe, fd, mm) in zip(BUDGETS, cells):
            tag = "" if nfe == b else f" ({nfe})"
            parts.append(f"{fd:.4f}{tag} | {mm:.2e}")
        print(f"| {name} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
