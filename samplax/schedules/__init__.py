"""Noise schedules (alpha, sigma, lam and its inverse) and step schedules."""

from samplax.schedules import steps
from samplax.schedules.base import NoiseSchedule
from samplax.schedules.discrete import DiscreteVP, rescale_zero_terminal_snr
from samplax.schedules.flow import RectifiedFlow
from samplax.schedules.shift import LogSNRShift, shifted
from samplax.schedules.steps import (
    align_your_steps,
    custom,
    discrete_spacing,
    exponential,
    karras,
    kl_optimal,
    polyexponential,
    sgm_uniform,
    time_quadratic,
    uniform_logsnr,
    uniform_time,
    validate_timesteps,
)
from samplax.schedules.ve import EDM, VE
from samplax.schedules.vp import VPCosine, VPLinear

__all__ = [
    "EDM",
    "VE",
    "DiscreteVP",
    "LogSNRShift",
    "NoiseSchedule",
    "RectifiedFlow",
    "VPCosine",
    "VPLinear",
    "align_your_steps",
    "custom",
    "discrete_spacing",
    "exponential",
    "karras",
    "kl_optimal",
    "polyexponential",
    "rescale_zero_terminal_snr",
    "sgm_uniform",
    "shifted",
    "steps",
    "time_quadratic",
    "uniform_logsnr",
    "uniform_time",
    "validate_timesteps",
]
