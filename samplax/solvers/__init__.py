"""Solver constructors (each returns a :class:`Plan`), the executor and the registry."""

from samplax.solvers.ancestral import ddim_eta, ddpm, euler_ancestral
from samplax.solvers.dc_solver import dc_unipc, fit_dc_ratios
from samplax.solvers.ddim import ddim
from samplax.solvers.deis import deis
from samplax.solvers.dpm_solver import dpm_solver, dpm_solver_fast
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.dpm_solver_v3 import EMS, compute_ems, dpm_solver_v3
from samplax.solvers.edm import euler, heun
from samplax.solvers.edm_sde import edm_stochastic
from samplax.solvers.eps_scaling import eps_scaling
from samplax.solvers.er_sde import er_sde
from samplax.solvers.executor import Segments, SlotHook, sample
from samplax.solvers.momentum import dpm_solver_pp_hb, ghvb, plms_hb
from samplax.solvers.noise import BrownianNoise
from samplax.solvers.plan import Combo, Lin, Plan, PlanBuilder, pad_plan, stack_plans
from samplax.solvers.pndm import ipndm, pndm
from samplax.solvers.registry import SOLVERS, get_solver, plan_for_nfe
from samplax.solvers.restart import RestartInterval, restart, restart_edm
from samplax.solvers.sa_solver import sa_solver
from samplax.solvers.sde_dpm_solver import sde_dpm_solver_pp
from samplax.solvers.time_shift import time_shift
from samplax.solvers.unipc import unipc
from samplax.solvers.usf import Choices, Step, usf, usf_weighted

__all__ = [
    "EMS",
    "SOLVERS",
    "BrownianNoise",
    "Choices",
    "Combo",
    "Lin",
    "Plan",
    "PlanBuilder",
    "RestartInterval",
    "Segments",
    "SlotHook",
    "Step",
    "compute_ems",
    "dc_unipc",
    "ddim",
    "ddim_eta",
    "ddpm",
    "deis",
    "dpm_solver",
    "dpm_solver_fast",
    "dpm_solver_pp",
    "dpm_solver_pp_hb",
    "dpm_solver_v3",
    "edm_stochastic",
    "eps_scaling",
    "er_sde",
    "euler",
    "euler_ancestral",
    "fit_dc_ratios",
    "get_solver",
    "ghvb",
    "heun",
    "ipndm",
    "pad_plan",
    "plan_for_nfe",
    "plms_hb",
    "pndm",
    "restart",
    "restart_edm",
    "sa_solver",
    "sample",
    "sde_dpm_solver_pp",
    "stack_plans",
    "time_shift",
    "unipc",
    "usf",
    "usf_weighted",
]
