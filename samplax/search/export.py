"""Searched schedules written for other tools: sigmas that diffusers and ComfyUI run.

A times-only result (:mod:`samplax.search.times_only`) is a registered solver and
its times. Where that solver is exactly a sampler of diffusers or ComfyUI run on
given sigmas, the times are written as what those tools take: the k-diffusion
sigmas ``sigma_tilde = sigma/alpha`` of each time (the last one included; a run
ends there), the network labels of a discrete schedule (:class:`DiscreteVP`: the
training step ``N t - 1``, fractional), and the sampler and call that run them.

Exact counterparts (the same steps on the same sigmas, Karras et al. 2022's Euler
in the EDM view, which samplax's ``euler`` and ``ddim`` both are):

- diffusers: ``EulerDiscreteScheduler``, ``scheduler.set_timesteps(sigmas=...)``
  (all sigmas, the final one last); it calls the network at the fractional
  ``_sigma_to_t(sigma)``;
- ComfyUI / k-diffusion: the ``euler`` sampler on a ``SIGMAS`` input
  (``SamplerCustom``; k-diffusion ``sample_euler(model, x, sigmas)``).

Other solvers' times are written only as ``json``: their tools' samplers differ
from samplax's in the order of the last step or in which sigmas they accept
(diffusers' multistep schedulers take integer ``timesteps``), so the same sigmas
would not give the searched samples. A full searched plan (per-step choices, free
coefficients, fitted arrays) is not a list of sigmas at all.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from samplax.schedules.discrete import DiscreteVP

FORMATS = ("json", "diffusers", "comfyui")

# registered solver -> (diffusers scheduler and call, ComfyUI sampler)
EXACT = {
    "euler": ("EulerDiscreteScheduler", "euler"),
    "ddim": ("EulerDiscreteScheduler", "euler"),
}


class ExportError(ValueError):
    """A result that cannot be written in the asked format (the message says why)."""


def _sigmas(schedule, ts) -> np.ndarray:
    ts = jnp.asarray(ts)
    alpha, sigma = np.asarray(schedule.alpha(ts), float), np.asarray(schedule.sigma(ts), float)
    return np.where(sigma > 0, sigma / np.where(alpha > 0, alpha, 1.0), 0.0)


def export_schedule(result: dict, schedule, fmt: str = "json") -> dict:
    """The schedule of a search ``result`` (:func:`samplax.search.load_result`) on
    ``schedule``, in ``fmt`` (:data:`FORMATS`), as a JSON-ready dict.

    Raises :class:`ExportError` for a full searched plan (not a list of sigmas; search
    with ``--times-only``) and for a solver without an exact counterpart in the
    tool asked for (module docstring)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    solver = result.get("solver")
    if solver is None:
        raise ExportError(
            "this is a full searched plan: its per-step solver choices, free coefficients "
            "and fitted arrays are not a list of sigmas that another tool's solver runs. "
            "Search the times of one standard solver instead: samplax search --solver euler "
            "--times-only (euler runs exactly in diffusers and ComfyUI)")
    ts = np.asarray(result["timesteps"], float)
    out = {"format": f"samplax.export/{fmt}", "solver": solver, "nfe": result["nfe"],
           "model": result.get("model"), "sigmas": _sigmas(schedule, ts).tolist()}
    if isinstance(schedule, DiscreteVP):
        out["timesteps"] = np.asarray(schedule.label(jnp.asarray(ts)), float).tolist()
    if fmt == "json":
        return dict(out, times=ts.tolist(), schedule=result.get("schedule"))
    if solver not in EXACT:
        raise ExportError(
            f"{solver}'s times cannot be run exactly by {fmt}: its samplers differ from "
            f"samplax's {solver} (the last step's order, or integer timesteps only), so "
            "the same sigmas would give other samples. Search with --solver euler "
            f"(exact in diffusers and ComfyUI), or export --format json")
    scheduler, sampler = EXACT[solver]
    if fmt == "diffusers":
        return dict(out, scheduler=scheduler, usage=(
            f"scheduler = {scheduler}.from_config(pipe.scheduler.config); "
            "pipe.scheduler = scheduler; pipe(..., sigmas=sigmas)  # or "
            "scheduler.set_timesteps(sigmas=sigmas): every sigma, the last one included"))
    return dict(out, sampler_name=sampler, usage=(
        f"SamplerCustom with KSamplerSelect sampler_name={sampler!r} and these sigmas as "
        "its SIGMAS input (k-diffusion: sample_euler(model, x, sigmas))"))


__all__ = ["EXACT", "FORMATS", "ExportError", "export_schedule"]
