"""samplax: diffusion sampling solvers as data, run by one jitted lax.scan.

    import samplax
    schedule = samplax.schedules.VPLinear()
    ts = samplax.schedules.uniform_logsnr(schedule, 10)
    plan = samplax.dpm_solver_pp(schedule, ts, order=2)
    x0 = samplax.sample(denoiser, plan, x_T)
"""

from samplax import guidance, metrics, models, schedules, solvers
from samplax.solvers import (
    SOLVERS,
    Choices,
    Plan,
    PlanBuilder,
    Segments,
    Step,
    ddim,
    deis,
    dpm_solver,
    dpm_solver_fast,
    dpm_solver_pp,
    euler,
    get_solver,
    heun,
    ipndm,
    plan_for_nfe,
    pndm,
    sample,
    stack_plans,
    unipc,
    usf,
    usf_weighted,
)

__all__ = [
    "SOLVERS",
    "Choices",
    "Plan",
    "PlanBuilder",
    "Segments",
    "Step",
    "ddim",
    "deis",
    "dpm_solver",
    "dpm_solver_fast",
    "dpm_solver_pp",
    "euler",
    "get_solver",
    "guidance",
    "heun",
    "ipndm",
    "metrics",
    "models",
    "plan_for_nfe",
    "pndm",
    "sample",
    "schedules",
    "solvers",
    "stack_plans",
    "unipc",
    "usf",
    "usf_weighted",
]
__version__ = "0.1.0"
