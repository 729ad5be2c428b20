"""The solver registry: every deterministic solver by name, with its NFE accounting.

Benchmarks, the conformance tests, the search's baselines and the CLI all iterate
over :data:`SOLVERS`. Each entry builds a plan from a schedule and times with its
options bound, says how many network evaluations ``n`` steps cost, and its
nominal order. :func:`plan_for_nfe` turns a budget into a plan of exactly that
NFE with a named step schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from samplax.schedules import steps as step_schedules
from samplax.solvers._common import reaches_zero_noise
from samplax.solvers.ddim import ddim
from samplax.solvers.deis import deis
from samplax.solvers.dpm_solver import dpm_solver
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.edm import euler, heun
from samplax.solvers.plan import Plan
from samplax.solvers.pndm import ipndm, pndm
from samplax.solvers.unipc import unipc
from samplax.solvers.usf import Step, usf


class SolverSpec(NamedTuple):
    """A registered solver.

    ``build(schedule, timesteps) -> Plan``; ``nfe(n_steps) -> int`` when the last
    time has ``sigma > 0``; ``order``: the nominal convergence order; ``family``: the
    paper's solver family (baselines are chosen per family); ``min_steps``: the
    fewest steps it accepts; ``saved_at_zero``: evaluations saved when the last time
    has ``sigma = 0`` (a singlestep solver's last step is then first order, so its
    intermediate evaluation is skipped). Use :meth:`cost` for both cases.
    """

    name: str
    build: Callable[..., Plan]
    nfe: Callable[[int], int]
    order: int
    family: str
    summary: str
    min_steps: int = 1
    saved_at_zero: int = 0

    def cost(self, n_steps: int, to_zero: bool = False) -> int:
        """Evaluations of ``n_steps`` steps; ``to_zero``: the last time has sigma = 0."""
        return self.nfe(n_steps) - (self.saved_at_zero if to_zero else 0)


def _spec(name, build, nfe, order, family, summary, min_steps=1, saved_at_zero=0):
    return name, SolverSpec(name, build, nfe, order, family, summary, min_steps, saved_at_zero)


SOLVERS: dict[str, SolverSpec] = dict(
    [
        _spec("ddim", ddim, lambda n: n, 1, "ddim", "DDIM (Song et al. 2021), first order"),
        _spec("euler", euler, lambda n: n, 1, "edm", "Euler in the EDM view (Karras et al. 2022)"),
        _spec("heun", heun, lambda n: 2 * n - 1, 2, "edm",
              "EDM Heun, Euler on the last step (Karras et al. 2022, alg. 1)"),
        _spec("dpm_solver_2", lambda s, t: dpm_solver(s, t, order=2), lambda n: 2 * n, 2,
              "dpm_solver", "DPM-Solver-2, singlestep (Lu et al. 2022)", saved_at_zero=1),
        _spec("dpm_solver_3", lambda s, t: dpm_solver(s, t, order=3), lambda n: 3 * n, 3,
              "dpm_solver", "DPM-Solver-3, singlestep (Lu et al. 2022)", saved_at_zero=2),
        _spec("dpm_solver_2m", lambda s, t: dpm_solver(s, t, order=2, method="multistep"),
              lambda n: n, 2, "dpm_solver", "DPM-Solver-2, multistep noise form"),
        _spec("dpm_solver_3m", lambda s, t: dpm_solver(s, t, order=3, method="multistep"),
              lambda n: n, 3, "dpm_solver", "DPM-Solver-3, multistep noise form"),
        _spec("dpm_solver_pp_2s",
              lambda s, t: dpm_solver_pp(s, t, order=2, method="singlestep"),
              lambda n: 2 * n, 2, "dpm_solver_pp", "DPM-Solver++(2S) (Lu et al. 2022b)",
              saved_at_zero=1),
        _spec("dpm_solver_pp_2m", lambda s, t: dpm_solver_pp(s, t, order=2), lambda n: n, 2,
              "dpm_solver_pp", "DPM-Solver++(2M), midpoint (Lu et al. 2022b)"),
        _spec("dpm_solver_pp_2m_heun",
              lambda s, t: dpm_solver_pp(s, t, order=2, solver_type="heun"), lambda n: n, 2,
              "dpm_solver_pp", "DPM-Solver++(2M), heun variant"),
        _spec("dpm_solver_pp_3m", lambda s, t: dpm_solver_pp(s, t, order=3), lambda n: n, 3,
              "dpm_solver_pp", "DPM-Solver++(3M), truly third order"),
        _spec("dpm_solver_pp_3m_published",
              lambda s, t: dpm_solver_pp(s, t, order=3, third_order="published"),
              lambda n: n, 3, "dpm_solver_pp",
              "DPM-Solver++(3M) as published/diffusers (order ~2)"),
        _spec("unipc_bh1_2", lambda s, t: unipc(s, t, order=2, variant="bh1"), lambda n: n, 3,
              "unipc", "UniPC-2 bh1 with UniC (Zhao et al. 2023)"),
        _spec("unipc_bh2_2", lambda s, t: unipc(s, t, order=2, variant="bh2"), lambda n: n, 3,
              "unipc", "UniPC-2 bh2 with UniC"),
        _spec("unipc_bh1_3", lambda s, t: unipc(s, t, order=3, variant="bh1"), lambda n: n, 4,
              "unipc", "UniPC-3 bh1 with UniC"),
        _spec("unipc_bh2_3", lambda s, t: unipc(s, t, order=3, variant="bh2"), lambda n: n, 4,
              "unipc", "UniPC-3 bh2 with UniC"),
        _spec("deis_tab_2", lambda s, t: deis(s, t, order=2), lambda n: n, 2, "deis",
              "DEIS tAB-2 (Zhang & Chen 2023)"),
        _spec("deis_tab_3", lambda s, t: deis(s, t, order=3), lambda n: n, 3, "deis",
              "DEIS tAB-3"),
        _spec("deis_rhoab_3", lambda s, t: deis(s, t, order=3, method="rhoab"), lambda n: n, 3,
              "deis", "DEIS rhoAB-3"),
        _spec("ipndm", lambda s, t: ipndm(s, t, order=4), lambda n: n, 2, "ipndm",
              "iPNDM, fixed Adams-Bashforth weights (order 4 on uniform sigma steps)"),
        _spec("ipndm_v", lambda s, t: ipndm(s, t, order=4, variable_step=True), lambda n: n, 4,
              "ipndm", "iPNDM_v, variable-step Adams-Bashforth"),
        _spec("pndm_s", lambda s, t: pndm(s, t, method="s"), lambda n: n + 1, 2, "pndm",
              "S-PNDM (Liu et al. 2022)", 2),
        _spec("plms", lambda s, t: pndm(s, t, method="plms"), lambda n: n + 1, 2, "pndm",
              "PLMS (diffusers PNDM without PRK steps)", 2),
        _spec("pndm_f", lambda s, t: pndm(s, t, method="f"), lambda n: n + 9 if n >= 3 else 4 * n,
              2, "pndm", "F-PNDM, pseudo-RK4 warm-up", 1),
        _spec("usf_data3_pc", lambda s, t: usf(s, t, Step("data", 3, True)), lambda n: n, 4,
              "usf", "exponential integrator, data form, 3 nodes + corrector"),
    ]
)

# Hand-made baselines for the search (issue 5): the best of these families over
# STEP_SCHEDULES is what a searched schedule must beat.
BASELINE_SOLVERS = ("dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_bh1_2", "unipc_bh2_2",
                    "unipc_bh2_3", "deis_tab_3", "ipndm", "ipndm_v")


def _ays(schedule, n, *, t_start, t_end):
    """The Align-Your-Steps SD1.5 profile moved onto ``[t_start, t_end]``.

    The published table's log-sigma shape (normalized to [0, 1] and interpolated
    log-linearly to ``n + 1`` points) is mapped onto this problem's log
    ``sigma_tilde`` range: the transfer of AYS to a model it was not tuned for.
    """
    table = np.log(np.asarray(step_schedules.AYS_SIGMAS["sd15"], float))
    prof = (table - table[-1]) / (table[0] - table[-1])
    xs = np.linspace(0, 1, len(table))
    prof = np.interp(np.linspace(0, 1, n + 1), xs, prof)
    lam0 = schedule.lam(jnp.asarray(t_start))
    lam1 = schedule.lam(jnp.asarray(t_end))
    ts = schedule.t_of_lam(lam1 + (lam0 - lam1) * jnp.asarray(prof))
    return ts.at[0].set(t_start).at[-1].set(t_end)


STEP_SCHEDULES: dict[str, Callable] = {
    "time": lambda s, n, t0, t1: step_schedules.uniform_time(s, n, t_start=t0, t_end=t1),
    "logsnr": lambda s, n, t0, t1: step_schedules.uniform_logsnr(s, n, t_start=t0, t_end=t1),
    "quadratic": lambda s, n, t0, t1: step_schedules.time_quadratic(s, n, t_start=t0, t_end=t1),
    "karras": lambda s, n, t0, t1: step_schedules.karras(s, n, t_start=t0, t_end=t1),
    "ays": lambda s, n, t0, t1: _ays(s, n, t_start=t0, t_end=t1),
}


def get_solver(name: str) -> SolverSpec:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None


def steps_for_nfe(spec: SolverSpec, nfe: int, to_zero: bool = False) -> int:
    """The number of steps at which ``spec`` costs exactly ``nfe`` evaluations.

    ``to_zero``: the run ends at ``sigma = 0`` (see :attr:`SolverSpec.saved_at_zero`).
    Every registered cost grows with the steps (tests/test_bad_input.py checks it),
    so the answer is found by bisection: a huge infeasible budget fails at once.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int | np.integer):
        raise TypeError(f"nfe must be an integer, got {nfe!r}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    lo, hi = spec.min_steps, spec.min_steps
    while spec.cost(hi, to_zero) < nfe and hi <= 4 * nfe + 10:
        lo, hi = hi, 2 * hi
    while lo < hi:  # the fewest steps that cost at least nfe
        mid = (lo + hi) // 2
        if spec.cost(mid, to_zero) < nfe:
            lo = mid + 1
        else:
            hi = mid
    if spec.cost(lo, to_zero) == nfe:
        return lo
    near = range(max(spec.min_steps, lo - 6), lo + 7)
    feasible = sorted({spec.cost(n, to_zero) for n in near})
    raise ValueError(
        f"{spec.name} cannot spend exactly {nfe} NFE"
        f"{' when ending at sigma = 0' if to_zero else ''}; feasible budgets near it: "
        f"{[f for f in feasible if abs(f - nfe) <= 6]}"
    )


MAX_NFE = 10_000  # a plan is built slot by slot in Python: more is minutes, never needed


def plan_for_nfe(name: str, schedule, nfe: int, step_schedule: str = "logsnr", *,
                 t_start=None, t_end=None) -> Plan:
    """A plan of solver ``name`` with exactly ``nfe`` evaluations.

    ``step_schedule``: one of :data:`STEP_SCHEDULES`; ends default to the
    schedule's ``t_max`` and ``t_min``.
    """
    spec = get_solver(name)
    if isinstance(nfe, int) and not isinstance(nfe, bool) and nfe > MAX_NFE:
        raise ValueError(f"nfe={nfe} is more than the {MAX_NFE:,} evaluations plan_for_nfe "
                         "builds; pass the solver its timesteps directly")
    if step_schedule not in STEP_SCHEDULES:
        raise ValueError(
            f"unknown step schedule {step_schedule!r}; choose one of {sorted(STEP_SCHEDULES)}"
        )
    t0 = schedule.t_max if t_start is None else t_start
    t1 = schedule.t_min if t_end is None else t_end
    n = steps_for_nfe(spec, nfe, reaches_zero_noise(schedule, jnp.asarray(t1)))
    plan = spec.build(schedule, STEP_SCHEDULES[step_schedule](schedule, n, t0, t1))
    if plan.nfe != nfe:  # the registry's accounting is tested; this guards user entries
        raise AssertionError(f"{name}: expected {nfe} NFE, plan has {plan.nfe}")
    return plan
