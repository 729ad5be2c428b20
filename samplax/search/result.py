"""Search results as schema-versioned JSON files (never pickle), and loading them back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp

from samplax.solvers.usf import Step, usf

SCHEMA = "samplax.search/1"


class ResultError(ValueError):
    """A file that is not a valid samplax search result."""


def atomic_write_json(path, obj) -> None:
    """Write JSON so that a kill mid-write never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def schedule_description(schedule) -> dict:
    """Class name and scalar fields: enough to detect loading onto the wrong schedule."""
    fields = {}
    for k, v in vars(schedule).items():
        if isinstance(v, int | float | bool | str):
            fields[k] = v
        elif hasattr(v, "shape") and jnp.ndim(v) == 0:
            fields[k] = float(v)
    return {"class": type(schedule).__name__, "fields": fields}


def load_result(path) -> dict:
    """Read and validate a search result; raises :class:`ResultError` with the reason."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise ResultError(f"{path}: not a samplax search result (schema {got!r}, expected "
                          f"{SCHEMA!r})")
    need = {"nfe": int, "timesteps": list, "steps": list, "afs": bool}
    for key, typ in need.items():
        if not isinstance(obj.get(key), typ):
            raise ResultError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    try:
        steps = [Step(str(s["prediction"]), int(s["order"]), bool(s["corrector"]))
                 for s in obj["steps"]]
    except (KeyError, TypeError) as e:
        raise ResultError(f"{path}: malformed step choice ({e})") from None
    if len(obj["timesteps"]) != len(steps) + 1:
        raise ResultError(f"{path}: {len(obj['timesteps'])} timesteps for {len(steps)} steps")
    if len(steps) - int(obj["afs"]) != obj["nfe"]:
        raise ResultError(f"{path}: steps and afs do not add up to nfe={obj['nfe']}")
    obj["_steps"] = steps
    return obj


def plan_from_result(obj: dict, schedule):
    """The plan a result describes, on ``schedule`` (checked against the recorded one)."""
    rec = obj.get("schedule")
    if rec is not None and rec.get("class") != type(schedule).__name__:
        raise ResultError(
            f"result was searched for a {rec.get('class')} schedule, got {type(schedule).__name__}"
        )
    coefs = obj.get("coefficients")
    mt = obj.get("model_times")
    return usf(schedule, jnp.asarray(obj["timesteps"]), obj["_steps"], afs=obj["afs"],
               coefficients=None if coefs is None else jnp.asarray(coefs),
               model_times=None if mt is None else jnp.asarray(mt))


def load_plan(path, schedule):
    """Load a searched schedule saved by :func:`samplax.search.search` as a plan."""
    return plan_from_result(load_result(path), schedule)
