"""Analytic models with exact denoisers, reference solutions, parameterization adapters."""

from samplax.models.gaussian import (
    GaussianMixture,
    gaussian,
    gaussian_flow,
    point_mass,
    random_mixture,
)
from samplax.models.reference import reference_solve

__all__ = [
    "GaussianMixture",
    "gaussian",
    "gaussian_flow",
    "point_mass",
    "random_mixture",
    "reference_solve",
]
