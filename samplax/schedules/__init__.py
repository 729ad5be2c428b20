"""Noise schedules (alpha, sigma, lam and its inverse) and step schedules."""

from samplax.schedules.base import NoiseSchedule
from samplax.schedules.vp import VPLinear

__all__ = ["NoiseSchedule", "VPLinear"]
