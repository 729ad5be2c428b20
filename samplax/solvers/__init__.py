"""Solver constructors (each returns a :class:`Plan`), the executor and the registry."""

from samplax.solvers.ddim import ddim
from samplax.solvers.deis import deis
from samplax.solvers.dpm_solver import dpm_solver, dpm_solver_fast
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.edm import euler, heun
from samplax.solvers.executor import Segments, SlotHook, sample
from samplax.solvers.plan import Combo, Lin, Plan, PlanBuilder, pad_plan, stack_plans
from samplax.solvers.pndm import ipndm, pndm
from samplax.solvers.registry import SOLVERS, get_solver, plan_for_nfe
from samplax.solvers.unipc import unipc
from samplax.solvers.usf import Choices, Step, usf, usf_weighted

__all__ = [
    "SOLVERS",
    "Choices",
    "Combo",
    "Lin",
    "Plan",
    "PlanBuilder",
    "Segments",
    "SlotHook",
    "Step",
    "ddim",
    "deis",
    "dpm_solver",
    "dpm_solver_fast",
    "dpm_solver_pp",
    "euler",
    "get_solver",
    "heun",
    "ipndm",
    "pad_plan",
    "plan_for_nfe",
    "pndm",
    "sample",
    "stack_plans",
    "unipc",
    "usf",
    "usf_weighted",
]
