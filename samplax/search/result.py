"""Search results as schema-versioned JSON files (never pickle), and loading them back."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from samplax.search.basis import check_basis
from samplax.solvers.usf import MAX_ORDER, Step, usf

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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: not a JSON file ({e})") from None
    except IsADirectoryError:
        raise ResultError(f"{path}: is a directory, not a result file") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise ResultError(f"{path}: not a samplax search result (schema {got!r}, expected "
                          f"{SCHEMA!r})")
    for key in ("model", "model_fingerprint"):
        if not isinstance(obj.get(key), str | None):
            raise ResultError(f"{path}: field {key!r} must be a string, got {obj[key]!r}")
    ts = obj.get("timesteps")
    if isinstance(ts, list) and not all(
            isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
            for t in ts):
        raise ResultError(f"{path}: field 'timesteps' must hold finite numbers, got {ts!r}")
    if "solver" in obj:
        return _load_times_only(path, obj)
    need = {"nfe": int, "timesteps": list, "steps": list, "afs": bool}
    for key, typ in need.items():
        value = obj.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ResultError(f"{path}: field {key!r} missing or not a {typ.__name__} "
                              f"(got {value!r})")
    if obj["nfe"] < 1:
        raise ResultError(f"{path}: field 'nfe' must be >= 1, got {obj['nfe']}")
    steps = [_step(path, i, s) for i, s in enumerate(obj["steps"])]
    if len(obj["timesteps"]) != len(steps) + 1:
        raise ResultError(f"{path}: {len(obj['timesteps'])} timesteps for {len(steps)} steps")
    if len(steps) - int(obj["afs"]) != obj["nfe"]:
        raise ResultError(f"{path}: steps and afs do not add up to nfe={obj['nfe']}")
    for key, width in (("coefficients", MAX_ORDER - 1), ("model_times", None)):
        _check_numbers(path, key, obj.get(key), len(steps) if width else obj["nfe"], width)
    obj["_steps"] = steps
    return obj


def _check_numbers(path, key: str, value, rows: int, width: int | None) -> None:
    """An optional field of finite numbers: ``[rows]``, or ``[rows, width]``."""
    if value is None:
        return
    shape = (rows,) if width is None else (rows, width)
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.all(np.isfinite(a)):
        raise ResultError(f"{path}: field {key!r} must be finite numbers of shape {shape}, "
                          f"got {value!r:.80}")


def _load_times_only(path, obj: dict) -> dict:
    """A times-only result (:mod:`samplax.search.times_only`): a registered solver's
    name and its times."""
    from samplax.solvers.registry import SOLVERS

    solver, nfe, ts = obj.get("solver"), obj.get("nfe"), obj.get("timesteps")
    if solver not in SOLVERS:
        raise ResultError(f"{path}: solver {solver!r} is not a registered solver "
                          f"({', '.join(sorted(SOLVERS))})")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ResultError(f"{path}: field 'nfe' must be a positive integer, got {nfe!r}")
    if (not isinstance(ts, list) or len(ts) < 2
            or not all(isinstance(t, int | float) and not isinstance(t, bool) for t in ts)):
        raise ResultError(f"{path}: field 'timesteps' must be a list of at least 2 numbers")
    spec = SOLVERS[solver]
    if nfe not in (spec.cost(len(ts) - 1), spec.cost(len(ts) - 1, True)):
        raise ResultError(f"{path}: {len(ts) - 1} steps of {solver} do not cost nfe={nfe}")
    if "steps" in obj:
        raise ResultError(f"{path}: a result has either 'solver' (times only) or 'steps'")
    obj["_steps"] = None
    return obj


def _step(path, i: int, s) -> Step:
    """Step ``i`` of a result, its fields' JSON types checked (a string is not a bool,
    3.7 is not an order)."""
    if not isinstance(s, dict) or set(s) != {"prediction", "order", "corrector"}:
        raise ResultError(f"{path}: steps[{i}] must have exactly the fields prediction, "
                          f"order, corrector; got {s!r}")
    pred, order, corr = s["prediction"], s["order"], s["corrector"]
    if pred not in ("data", "noise"):
        raise ResultError(f"{path}: steps[{i}].prediction must be 'data' or 'noise', got "
                          f"{pred!r}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ResultError(f"{path}: steps[{i}].order must be an integer in 1..{MAX_ORDER}, "
                          f"got {order!r}")
    if not isinstance(corr, bool):
        raise ResultError(f"{path}: steps[{i}].corrector must be true or false, got {corr!r}")
    return Step(pred, order, corr)


def check_result_schedule(obj: dict, schedule) -> None:
    """Refuse a result searched for another noise schedule: the class and every scalar
    field recorded (:func:`schedule_description`) must match ``schedule``'s."""
    rec = obj.get("schedule")
    if rec is None:
        return
    if not isinstance(rec, dict) or not isinstance(rec.get("fields", {}), dict):
        raise ResultError(f"field 'schedule' must be an object with 'class' and 'fields', "
                          f"got {rec!r}")
    got = schedule_description(schedule)
    if rec.get("class") != got["class"]:
        raise ResultError(f"result was searched for a {rec.get('class')} schedule, got "
                          f"{got['class']}")
    for k, v in (rec.get("fields") or {}).items():
        mine = got["fields"].get(k)
        same = (mine == v if not isinstance(v, float) or not isinstance(mine, int | float)
                else abs(mine - v) <= 1e-12 * max(abs(v), 1.0))
        if not same:
            raise ResultError(f"result was searched for {rec['class']}({k}={v!r}), this "
                              f"schedule has {k}={mine!r}; pass check_schedule=False to "
                              "use it anyway")


def check_result_model(obj: dict, name: str, fingerprint: str | None) -> None:
    """Refuse a result searched for another model: by the recorded name, and by the
    recorded ``model_fingerprint`` (:func:`samplax.models.builtin.model_fingerprint`)
    where both sides have one, so that retrained weights under one name are caught."""
    rec, rec_fp = obj.get("model"), obj.get("model_fingerprint")
    if rec not in (None, name):
        raise ResultError(f"this schedule was searched for --model {rec}, not {name}")
    if rec_fp is not None and fingerprint is not None and rec_fp != fingerprint:
        raise ResultError(f"this schedule was searched for a model {rec} of fingerprint "
                          f"{rec_fp}; this one's is {fingerprint} (its weights or "
                          "parameters changed)")


def plan_from_result(obj: dict, schedule, *, check: bool = True):
    """The plan a result describes, on ``schedule`` (checked against the recorded one
    unless ``check=False``)."""
    if check:
        check_result_schedule(obj, schedule)
    if obj.get("solver") is not None:
        from samplax.solvers.registry import get_solver

        return get_solver(obj["solver"]).build(schedule, jnp.asarray(obj["timesteps"]))
    coefs = obj.get("coefficients")
    mt = obj.get("model_times")
    plan = usf(schedule, jnp.asarray(obj["timesteps"]), obj["_steps"], afs=obj["afs"],
               coefficients=None if coefs is None else jnp.asarray(coefs),
               model_times=None if mt is None else jnp.asarray(mt))
    if obj.get("tuned_plan") is not None:
        plan = with_tuned_plan(plan, obj["tuned_plan"])
    return plan


_TUNED = ("evaluate", "update", "final")


def tuned_plan_to_json(plan) -> dict:
    """The arrays free-plan tuning changes (:mod:`samplax.search.free_plan`); the
    output combination may be per-coordinate with an offset ``c``
    (:mod:`samplax.search.output_fit`)."""
    out = {"t": np.asarray(plan.t).tolist()}
    for name in _TUNED:
        c = getattr(plan, name)
        fields = ("x", "d", "e") + (("c",) if name == "final" and c.c is not None else ())
        out[name] = {k: np.asarray(getattr(c, k)).tolist() for k in fields}
    if plan.basis is not None:
        out["basis"] = np.asarray(plan.basis).tolist()
    return out


def with_tuned_plan(plan, tuned: dict):
    """``plan`` (built from the result's description) with its tuned arrays; they
    must have exactly the description's shapes, except that each combination may
    carry trailing per-coordinate axes ``F``, the same for all
    (:mod:`samplax.search.output_fit`, :mod:`samplax.search.coordinate_fit`: ``x:
    [K, *F]``, ``d: [K, Hd, *F]``, ``e: [K, He, *F]``, the output without ``K``, with
    an optional offset ``c: F``), and be finite. An optional ``basis`` (``[n, n]``,
    orthogonal: :attr:`samplax.solvers.plan.Plan.basis`) makes ``F`` its ``(n,)``
    coordinates."""
    def array(value, lead, where, dtype):
        try:
            a = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ResultError(f"tuned_plan.{where}: not an array of numbers") from None
        lead = tuple(lead)
        if a.shape[:len(lead)] != lead:
            raise ResultError(f"tuned_plan.{where}: shape {a.shape} does not match the "
                              f"described plan's {lead}")
        if not np.all(np.isfinite(a)):
            raise ResultError(f"tuned_plan.{where}: non-finite values")
        return a, jnp.result_type(dtype)

    if not isinstance(tuned, dict) or set(tuned) - {"basis"} != {"t", *_TUNED}:
        raise ResultError("tuned_plan must have the fields t, evaluate, update, final "
                          "(and optionally basis)")
    basis = None
    if "basis" in tuned:
        b, db = array(tuned["basis"], (), "basis", plan.t)
        problem = check_basis(b)
        if problem:
            raise ResultError(f"tuned_plan.basis: {problem}")
        basis = jnp.asarray(b, db)
    t, dt = array(tuned["t"], np.shape(plan.t), "t", plan.t)
    if t.shape != np.shape(plan.t):
        raise ResultError(f"tuned_plan.t: shape {t.shape}, expected {np.shape(plan.t)}")
    out, feat = {"t": jnp.asarray(t, dt)}, None
    for name in _TUNED:
        c, d = getattr(plan, name), tuned[name]
        final = name == "final"
        allowed = ({"x", "d", "e"}, {"x", "d", "e", "c"}) if final else ({"x", "d", "e"},)
        if not isinstance(d, dict) or set(d) not in allowed:
            raise ResultError(f"tuned_plan.{name} must have the fields x, d, e"
                              + (" (and optionally c)" if final else ""))
        x, dx = array(d["x"], np.shape(c.x), f"{name}.x", c.x)
        here = x.shape[np.ndim(c.x):]
        if here and basis is not None and here != basis.shape[:1]:
            raise ResultError(f"tuned_plan.{name}.x: per-coordinate shape {here}, but the "
                              f"basis has {basis.shape[0]} coordinates")
        if here and feat is None:
            feat = here
        elif here and here != feat:
            raise ResultError(f"tuned_plan.{name}.x: per-coordinate shape {here}, but "
                              f"another combination's is {feat}")
        arrays = {"x": jnp.asarray(x, dx)}
        want = {"d": np.shape(c.d) + here, "e": np.shape(c.e) + here}
        if "c" in d:
            want["c"] = here
        for k in want:
            like = c.x if k == "c" else getattr(c, k)
            a, dk = array(d[k], (), f"{name}.{k}", like)
            if a.size == 0 and 0 in want[k]:
                a = a.reshape(want[k])  # JSON keeps no shape of []
            if a.shape != want[k]:
                raise ResultError(f"tuned_plan.{name}.{k}: shape {a.shape}, expected "
                                  f"{want[k]} (per-coordinate shape {here} of {name}.x)")
            arrays[k] = jnp.asarray(a, dk)
        out[name] = c._replace(**arrays)
    return plan._replace(**out, basis=basis,
                         solver_t=plan.t if plan.solver_t is None else plan.solver_t)


def resize_result(obj: dict, nfe: int, schedule) -> dict:
    """Move a searched schedule to another budget ``nfe`` (transfer to NFE +/- k).

    Everything is read as a function of the relative position ``u = k/N`` along the
    run: the times through their log-SNR fraction ``(lam_k - lam_0)/(lam_N - lam_0)``,
    interpolated linearly at the new ``N'`` steps (so ends stay fixed and times stay
    strictly decreasing); the network-time offsets ``lam(model time) - lam(time)``
    likewise; per-step choices and free coefficients from the step at the nearest
    relative position (first to first, last to last). AFS is kept. The free-plan
    tuning of the original budget (``tuned_plan``) does not carry over: its arrays
    belong to that budget's slots. The returned result has no objective (it was not
    measured at the new budget). A times-only result (``solver``) keeps its solver,
    at the step count that spends ``nfe``.
    """
    obj = dict(obj)
    if "_steps" not in obj:
        raise ResultError("resize_result needs a validated result (load_result)")
    if isinstance(nfe, bool) or not isinstance(nfe, int | np.integer) or nfe < 1:
        raise ValueError(f"cannot resize to nfe={nfe!r}: nfe must be an integer >= 1")
    nfe = int(nfe)
    if obj.get("solver") is not None:
        from samplax.search.times_only import solver_steps

        n_new = solver_steps(obj["solver"], schedule, nfe, obj["timesteps"][-1])
        new_ts = _resized_times(schedule, obj["timesteps"], n_new)
        out = {k: v for k, v in obj.items() if k not in ("objective", "baselines")}
        return dict(out, nfe=nfe, timesteps=new_ts.tolist(), resized_from=obj["nfe"])
    afs = obj["afs"]
    n_old = len(obj["_steps"])
    n_new = nfe + int(afs)
    if nfe < 1 or n_new < 2:
        raise ValueError(f"cannot resize to nfe={nfe} (at least 2 steps needed)")
    new_ts = _resized_times(schedule, obj["timesteps"], n_new)
    lam = np.asarray(schedule.lam(jnp.asarray(obj["timesteps"])), float)
    u_old, u_new = np.linspace(0, 1, n_old + 1), np.linspace(0, 1, n_new + 1)
    nearest = np.rint(np.arange(n_new) * (n_old - 1) / (n_new - 1)).astype(int)
    steps = [obj["_steps"][i] for i in nearest]
    out = {k: v for k, v in obj.items() if k not in ("objective", "baselines", "tuned_plan")}
    out.update(nfe=nfe, timesteps=new_ts.tolist(), _steps=steps, resized_from=obj["nfe"],
               steps=[{"prediction": st.prediction, "order": st.order,
                       "corrector": st.corrector} for st in steps])
    if obj.get("coefficients") is not None:
        out["coefficients"] = np.asarray(obj["coefficients"])[nearest].tolist()
    if obj.get("model_times") is not None:
        first = int(afs)  # evaluation times: ts[1:-1] with AFS, ts[:-1] without
        shift = (np.asarray(schedule.lam(jnp.asarray(obj["model_times"])), float)
                 - lam[first:first + obj["nfe"]])
        u_eval_old = u_old[first:first + obj["nfe"]]
        u_eval_new = u_new[first:first + nfe]
        new_shift = np.interp(u_eval_new, u_eval_old, shift)
        new_eval_lam = np.asarray(schedule.lam(jnp.asarray(new_ts)), float)[first:first + nfe]
        out["model_times"] = np.asarray(
            schedule.t_of_lam(jnp.asarray(new_eval_lam + new_shift)), float).tolist()
    return out


def _resized_times(schedule, times, n_new: int) -> np.ndarray:
    """``n_new + 1`` times with the same ends whose log-SNR fraction
    ``(lam_k - lam_0)/(lam_N - lam_0)`` interpolates the given times' linearly in
    ``k/N``."""
    ts = jnp.asarray(times)
    lam = np.asarray(schedule.lam(ts), float)
    if not np.isfinite(lam[-1]):
        raise ValueError("resize_result needs sigma(t_end) > 0")
    frac = (lam - lam[0]) / (lam[-1] - lam[0])
    u_old, u_new = np.linspace(0, 1, len(lam)), np.linspace(0, 1, n_new + 1)
    new_lam = lam[0] + (lam[-1] - lam[0]) * np.interp(u_new, u_old, frac)
    new_ts = np.array(schedule.t_of_lam(jnp.asarray(new_lam)), float)
    new_ts[0], new_ts[-1] = float(ts[0]), float(ts[-1])
    return new_ts


def load_plan(path, schedule, nfe: int | None = None, *, check_schedule: bool = True):
    """Load a searched schedule saved by :func:`samplax.search.search` as a plan;
    with ``nfe``, moved to that budget by :func:`resize_result`. A result searched for
    another noise schedule (class or parameters) is refused unless
    ``check_schedule=False``."""
    obj = load_result(path)
    if check_schedule:
        check_result_schedule(obj, schedule)
    if nfe is not None and nfe != obj["nfe"]:
        obj = resize_result(obj, nfe, schedule)
    return plan_from_result(obj, schedule, check=False)
