"""samplax: diffusion sampling solvers as data, run by one jitted lax.scan."""

from samplax.solvers.executor import sample
from samplax.solvers.plan import Plan, PlanBuilder, stack_plans

__all__ = ["Plan", "PlanBuilder", "sample", "stack_plans"]
__version__ = "0.1.0"
