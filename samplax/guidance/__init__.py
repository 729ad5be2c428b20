"""Guidance: composable transforms of a denoiser, and population methods.

Model transforms take a denoiser ``D(x, t) -> x0_hat`` (or conditional and
unconditional branches of ``model(x, t, cond)``) and return a denoiser with a
declared :class:`Cost`, so that they run inside the one jitted sampling program
with every solver and an NFE budget counts them honestly (:func:`nfe_report`).
Population methods (FK steering) are slot hooks on the batch axis.
"""

from samplax.guidance.cads import CADS, cads, cads_model
from samplax.guidance.cfg import (
    APG,
    CFG,
    Branches,
    CFGPlusPlus,
    Conditional,
    Pair,
    apg,
    branches,
    cfg,
    cfg_pp,
    guidance_interval,
    pair,
    weight_schedule,
)
from samplax.guidance.cost import Cost, NFEReport, cost_of, nfe_report
from samplax.guidance.gradient import (
    DPS,
    TFG,
    ClassifierGuidance,
    classifier_guidance,
    dps,
    recurrent_ddim,
    tfg,
)
from samplax.guidance.particles import (
    FKResult,
    FKSteering,
    SearchResult,
    best_of_n,
    ess,
    fk_steering,
    resample,
    steering_slots,
    zero_order_search,
)
from samplax.guidance.thresholding import dynamic_threshold, static_threshold

__all__ = [
    "APG",
    "CADS",
    "CFG",
    "DPS",
    "TFG",
    "Branches",
    "CFGPlusPlus",
    "ClassifierGuidance",
    "Conditional",
    "Cost",
    "FKResult",
    "FKSteering",
    "NFEReport",
    "Pair",
    "SearchResult",
    "apg",
    "best_of_n",
    "branches",
    "cads",
    "cads_model",
    "cfg",
    "cfg_pp",
    "classifier_guidance",
    "cost_of",
    "dps",
    "dynamic_threshold",
    "ess",
    "fk_steering",
    "guidance_interval",
    "nfe_report",
    "pair",
    "recurrent_ddim",
    "resample",
    "static_threshold",
    "steering_slots",
    "tfg",
    "weight_schedule",
    "zero_order_search",
]
