#!/usr/bin/env python
"""Bad inputs, one at a time, through the public API and the command line, as a new
user would make them; :func:`classify` says what samplax did with each.

Classes:
  clear     ValueError/TypeError/FileNotFoundError/SystemExit (also samplax's own
            ValueError subclasses and FloatingPointError) whose message names the
            offending argument or field (each case lists the words that may name it)
  sensible  accepted and handled correctly (each case's check says what correct is)
  silent    accepted, but a wrong or non-finite result
  unclear   an error that does not name the problem (deep JAX/NumPy/json/argparse
            errors, KeyError, AttributeError, ZeroDivisionError, ...)
  slow      more than 10 s before failing (a CLI search whose bad option is not
            refused before the teacher starts: the teacher is stubbed out to raise)

Every case is a Python expression evaluated in this module's namespace.
``tests/test_bad_input_suite.py`` asserts each is clear or sensible; run
``python tests/bad_inputs.py [--only PREFIX] [--verbose]`` for the table.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

import jax  # noqa: E402, F401
import jax.numpy as jnp  # noqa: E402, F401
import numpy as np  # noqa: E402, F401

import samplax  # noqa: E402, F401
import samplax.cli as cli  # noqa: E402, F401
from samplax import (  # noqa: E402, F401
    Plan,
    RestartInterval,
    Segments,
    Step,
    comfyui_preset,
    ddim,
    ddim_eta,
    ddpm,
    deis,
    diffusers_preset,
    dpm_solver,
    dpm_solver_fast,
    dpm_solver_pp,
    edm_stochastic,
    eps_scaling,
    er_sde,
    euler,
    euler_ancestral,
    get_solver,
    heun,
    ipndm,
    plan_for_nfe,
    pndm,
    restart,
    restart_edm,
    sa_solver,
    sample,
    sde_dpm_solver_pp,
    stack_plans,
    time_shift,
    unipc,
    usf,
)
from samplax.guidance import (  # noqa: E402, F401
    apg,
    branches,
    cads,
    cfg,
    cfg_pp,
    classifier_guidance,
    dps,
    dynamic_threshold,
    fk_steering,
    guidance_interval,
    pair,
    resample,
    static_threshold,
    steering_slots,
    tfg,
    weight_schedule,
)
from samplax.models import gaussian, gaussian_flow  # noqa: E402, F401
from samplax.models.adapters import (  # noqa: E402, F401
    from_epsilon,
    from_flow,
    from_prediction,
    from_score,
    from_v,
)
from samplax.schedules import (  # noqa: E402, F401
    EDM,
    VE,
    DiscreteVP,
    LogSNRShift,
    RectifiedFlow,
    VPCosine,
    VPLinear,
    align_your_steps,
    custom,
    discrete_spacing,
    exponential,
    karras,
    kl_optimal,
    polyexponential,
    sgm_uniform,
    shifted,
    time_quadratic,
    uniform_logsnr,
    uniform_time,
)
from samplax.search import load_plan, load_result, resize_result  # noqa: E402, F401
from samplax.search.export import export_schedule  # noqa: E402, F401

nan, inf = float("nan"), float("inf")
SLOW_S = 10.0      # a case slower than this is 'slow'

REPO = os.path.dirname(os.path.dirname(os.path.abspath(samplax.__file__)))
SAVED = os.path.join(REPO, "benchmarks", "results", "search_gmm64_nfe5.json")
TMP = tempfile.mkdtemp(prefix="samplax_probe_")

# --------------------------------------------------------------------------------------
# Fixtures a new user would have: a VP schedule, its times, a Gaussian "model"
# --------------------------------------------------------------------------------------

VP = VPLinear()
TS = uniform_logsnr(VP, 6)                      # 7 times from 1.0 to 1e-3
GM = gaussian(jnp.zeros(4), jnp.full(4, 0.5))   # data N(0, 0.5 I) in 4-d
DEN = GM.denoiser(VP)                           # its exact denoiser D(x, t)
KEY = jax.random.key(0)
XT = jax.random.normal(KEY, (3, 4))             # x_T for VP at t = 1 (std ~ 1)
P = dpm_solver_pp(VP, TS, order=2)              # a good plan
P_SDE = sde_dpm_solver_pp(VP, TS)               # a stochastic plan
REF = gaussian_flow(GM, VP, XT, TS[0], TS[-1])  # exact probability-flow solution
CTRL = sample(DEN, P, XT)                       # the good run's result
TS20 = uniform_logsnr(VP, 20)
REF20 = gaussian_flow(GM, VP, XT, TS20[0], TS20[-1])
DVP = DiscreteVP.linear()
EDMS = EDM()
EDM_TS = karras(EDMS, 5, append_zero=True)
EPS_MODEL = lambda x, t: (x - VP.alpha(t) * DEN(x, t)) / VP.sigma(t)  # noqa: E731
COND = lambda x, t: DEN(x, t)  # noqa: E731
# a conditional model for CFG/CADS: the condition (an embedding [batch, 8]) moves x0
CMODEL = lambda x, t, c: DEN(x, t) + 0.1 * jnp.mean(c, -1, keepdims=True)  # noqa: E731
EMB, NULL = jnp.ones((3, 8)), jnp.zeros((3, 8))


class Used(dict):
    """What :func:`use` did: the sample, the schedule, its times and the start."""


def use(s, n=300):
    """Build times, a plan and a sample on schedule ``s``: what a user does first
    (uniform time steps, DPM-Solver++(2M), the exact Gaussian denoiser)."""
    ts = uniform_time(s, n)
    plan = dpm_solver_pp(s, ts)
    x = XT * s.marginal_std(ts[0], math.sqrt(0.5))
    return Used(x=sample(GM.denoiser(s), plan, x), s=s, ts=ts, x_T=x)


def sched_ok(res):
    """For :func:`use`: finite, lam strictly decreasing on the sampling range (the
    NoiseSchedule contract), and close to the exact probability-flow solution."""
    if not isinstance(res, Used):
        return finite(res)
    s, ts = res["s"], res["ts"]
    bad = finite(res["x"])
    if bad:
        return bad
    grid = jnp.linspace(float(ts[0]), float(ts[-1]), 513)
    lam = np.asarray(s.lam(grid))
    if not np.all(np.isfinite(lam[:-1])) or not np.all(np.diff(lam) > 0):
        i = int(np.argmax(~(np.diff(lam) > 0)))
        return (f"accepted a schedule whose lam(t) is not strictly decreasing "
                f"(lam rises/stalls near t={float(grid[i]):.3g}); sample finite")
    ref = gaussian_flow(GM, s, res["x_T"], ts[0], ts[-1])
    err = float(jnp.max(jnp.abs(res["x"] - ref)))
    scale = float(jnp.max(jnp.abs(ref)))
    if not err < 0.05 * max(scale, 1.0):
        return f"finite but wrong sample: max |x - exact| = {err:.3g} (|exact| ~ {scale:.3g})"
    return None


def use_ts(ts, s=VP):
    """Sample a DDIM plan on the given times."""
    plan = ddim(s, ts)
    return sample(GM.denoiser(s), plan, XT * s.marginal_std(plan.t[0], math.sqrt(0.5)))


def run(plan, den=None, x=None, key=None, **kw):
    return sample(DEN if den is None else den, plan, XT if x is None else x, key, **kw)


def run_ts(solver, ts, s=VP, key=KEY, **opts):
    """Build a plan with ``solver(s, ts, **opts)`` and sample it."""
    plan = solver(s, ts, **opts)
    return sample(GM.denoiser(s), plan, XT, key)  # VP at t = 1: x_T ~ N(0, I)


def guided(den, x=None, plan=None):
    return sample(den, P if plan is None else plan, XT if x is None else x)


_PB = []  # the built-in gmm64 problem, built once below (3 s, outside the timers)


def run_saved(path):
    """Sample the built-in gmm64 problem (the saved result's model) with a result file."""
    if not _PB:
        from samplax.models.builtin import builtin
        _PB.append(builtin("gmm64"))
    pb = _PB[0]
    return sample(pb.denoiser, load_plan(path, pb.schedule), pb.x_T(KEY, 4))


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def broken(change, name="r.json"):
    """The saved gmm64 NFE-5 search result with one change."""
    obj = json.load(open(SAVED))
    change(obj)
    return write(name, json.dumps(obj))


def times_only(name="times_only.json", **fields):
    obj = {"schema": "samplax.search/1", "model": "gmm64", "solver": "dpm_solver_pp_2m",
           "nfe": 5, "timesteps": [1.0, 0.5, 0.2, 0.05, 0.01, 0.001],
           "schedule": {"class": "VPLinear", "fields": {"beta_min": 0.1, "beta_max": 20.0}}}
    obj.update(fields)
    return write(name, json.dumps(obj))


def setkey(obj, path, value):
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value


# --- CLI -----------------------------------------------------------------------------


class ReachedWork(Exception):
    """The CLI accepted its options and started the teacher (minutes of work)."""


def _stub_teacher(*a, **k):
    raise ReachedWork("the CLI accepted the options and started the teacher solve "
                      "(minutes of work) without refusing them")


def CLI(*argv):
    """``samplax.cli.main(argv)`` with the teacher stubbed out (no CLI case runs a real
    search); argparse's stderr is captured into the message; x64 is restored."""
    argv = [str(a) for a in argv]
    err = io.StringIO()
    out = io.StringIO()
    x64, teacher = jax.config.jax_enable_x64, cli._teacher
    cli._teacher = _stub_teacher
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli.main(argv)
    except SystemExit as e:
        msg = e.code if isinstance(e.code, str) else (err.getvalue().strip().splitlines()
                                                      or [""])[-1]
        raise SystemExit(f"[exit {e.code if not isinstance(e.code, str) else 1}] {msg}") \
            from None
    finally:
        jax.config.update("jax_enable_x64", x64)
        cli._teacher = teacher
    return {"rc": rc, "stdout": out.getvalue()}


def out(name):
    return os.path.join(TMP, name)


def npy_ok(path, n=None):
    def check(res):
        if not os.path.exists(path):
            return f"no file {path} written"
        a = np.load(path)
        if not np.all(np.isfinite(a)):
            return f"saved non-finite samples {a.shape}"
        if n is not None and a.shape[0] != n:
            return f"saved {a.shape[0]} samples (asked {n})"
        if a.size == 0:
            return f"saved an empty array of shape {a.shape}"
        os.remove(path)
        return None
    return check


# --------------------------------------------------------------------------------------
# Result checks
# --------------------------------------------------------------------------------------


def _leaves(res):
    out = []
    for v in jax.tree.leaves(res):
        if isinstance(v, float):
            out.append(v)
        elif hasattr(v, "dtype") and not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            out.append(v)
    return out


def finite(res):
    """Every array leaf finite (default check)."""
    for v in _leaves(res):
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            return (f"non-finite result: {np.sum(~np.isfinite(a))}/{a.size} entries NaN/inf"
                    f" (shape {a.shape})")
    return None


def plausible(res):
    """Finite samples whose spread is that of the data (std ~ 0.7)."""
    bad = finite(res)
    if bad:
        return bad
    a = np.asarray(res)
    sd = float(np.std(a))
    if not 0.2 < sd < 2.5:
        return f"finite but implausible samples: std {sd:.3g} (data std 0.71)"
    return None


def near_ref(tol=0.05, ref="REF"):
    """Close to the exact probability-flow solution REF (deterministic solvers)."""
    def check(res):
        bad = finite(res)
        if bad:
            return bad
        err = float(jnp.max(jnp.abs(jnp.asarray(res) - eval(ref))))
        return None if err < tol else f"wrong result: max |x - exact| = {err:.3g}"
    return check


def plan_ok(res):
    """A plan with finite coefficients (used on constructors)."""
    return finite(res)


def same_as(expr, atol=1e-6):
    """Accepted input handled correctly iff the result equals ``eval(expr)``."""
    def check(res):
        bad = finite(res)
        if bad:
            return bad
        want = eval(expr, globals())
        a, b = jax.tree.leaves(res), jax.tree.leaves(want)
        if len(a) != len(b) or not all(
                np.shape(x) == np.shape(y) and np.allclose(np.asarray(x), np.asarray(y),
                                                           rtol=1e-5, atol=atol)
                for x, y in zip(a, b)):
            return f"accepted, but the result differs from {expr}"
        return None
    return check


def not_ctrl(res):
    """Guidance must change the unguided result CTRL."""
    bad = finite(res)
    if bad:
        return bad
    if np.allclose(np.asarray(res), np.asarray(CTRL)):
        return "accepted, but guidance is never applied (result equals the unguided run)"
    return None


def gamma_check(res):
    if res == 0.0:
        return ("accepted; gamma(t) = 0 at every t > 0: the condition is replaced by noise "
                "on the whole run")
    return None


def differs_from(expr):
    """Silent if the result equals ``eval(expr)`` (the option had no effect)."""
    def check(res):
        bad = finite(res)
        if bad:
            return bad
        want = eval(expr, globals())
        a, b = jax.tree.leaves(res), jax.tree.leaves(want)
        if len(a) == len(b) and all(np.shape(x) == np.shape(y) and
                                    np.allclose(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b)):
            return f"accepted, but the result equals {expr}: the option has no effect"
        return None
    return check


def integer_labels(res):
    lab = np.asarray(DVP.label(res[:-1]))
    if not np.allclose(lab, np.round(lab), atol=1e-3):
        return f"accepted; the network labels are fractional: {lab[:3]} ..."
    return None


def stochastic_plan(res):
    bad = finite(res)
    if bad:
        return bad
    if not res.stochastic:
        return "accepted, but the plan is deterministic: the requested noise is never added"
    return None


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------

OK_TYPES = (ValueError, TypeError, FileNotFoundError, SystemExit, FloatingPointError)
# errors of these types (or their subclasses) are never 'clear'
DEEP_TYPES = (KeyError, AttributeError, ZeroDivisionError, IndexError,
              json.JSONDecodeError, UnicodeDecodeError, AssertionError, NotImplementedError,
              RecursionError, OverflowError)
DEEP_PATTERNS = re.compile(
    r"tracer|jaxpr|concretiz|xla|mlir|lowering|dot_general|broadcast_shapes|"
    r"incompatible shapes|unsupported operand|not supported between instances|"
    r"object is not callable|object has no attribute|is not subscriptable|not iterable|"
    r"unhashable|cannot unpack|too many values to unpack|not enough values|"
    r"invalid prng key|key array|must be a scalar|got incompatible|"
    r"positional argument|scan got|Cannot interpret|could not convert|"
    r"Error interpreting argument|not a valid JAX array type|cannot be interpreted as an",
    re.I)


class Case:
    def __init__(self, cid, api, expr, kw=(), check=finite, note="", reached_ok=False):
        self.cid, self.api, self.expr, self.kw, self.check, self.note = (
            cid, api, expr, tuple(kw), check, note)
        self.reached_ok = reached_ok  # CLI search/compare: valid options, work may start


CASES: list[Case] = []


def C(cid, expr, kw=(), check=None, note="", api="API"):
    if check is None:
        check = sched_ok if expr.startswith("use(") else finite
    CASES.append(Case(cid, api, expr, kw, check, note))


def L(cid, argv, kw=(), check=None, note="", reached_ok=False):
    """A CLI case: argv is a shell-like string (split on spaces) or a list."""
    args = argv.split() if isinstance(argv, str) else argv
    CASES.append(Case(cid, "CLI", "CLI(" + ", ".join(repr(a) for a in args) + ")", kw,
                      check or (lambda r: None), note, reached_ok))


def classify(case: Case):
    t0 = time.perf_counter()
    quiet = contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            res = eval(case.expr, globals())
        if hasattr(res, "block_until_ready"):
            res.block_until_ready()
        try:
            verdict = case.check(res)
        except Exception as e:  # noqa: BLE001 -- a broken check is the probe's fault
            verdict = f"probe check failed: {type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        if dt > SLOW_S:
            return "slow", "-", f"accepted after {dt:.0f} s", dt
        if verdict is None:
            return "sensible", "-", _describe(res), dt
        return "silent", "-", verdict, dt
    except BaseException as e:  # noqa: BLE001
        dt = time.perf_counter() - t0
        if isinstance(e, KeyboardInterrupt):
            raise
        name = type(e).__name__
        msg = " ".join(str(e).split())
        if isinstance(e, ReachedWork):
            if case.reached_ok:
                return "sensible", name, "valid options: the teacher started", dt
            return "slow", name, msg, dt
        if dt > SLOW_S:
            return "slow", name, msg, dt
        if isinstance(e, DEEP_TYPES) or not isinstance(e, OK_TYPES):
            return "unclear", name, msg, dt
        if case.api == "CLI" and not isinstance(e, SystemExit):
            # a command line that ends in a Python traceback is not a clear refusal
            return "unclear", name, msg + " (a traceback, not a CLI error)", dt
        if type(e).__module__.startswith("jax") or DEEP_PATTERNS.search(msg):
            return "unclear", name, msg, dt
        if isinstance(e, SystemExit) and not msg:
            return "unclear", name, "(SystemExit without a message)", dt
        if case.kw and not any(_names(msg, k) for k in case.kw):
            return "unclear", name, msg, dt
        return "clear", name, msg, dt


def _names(msg: str, kw: str) -> bool:
    """Does ``msg`` name ``kw``? Word-bounded; case-sensitive for short keywords."""
    kw = kw.strip()
    flags = 0 if len(kw) <= 2 else re.I
    pat = (r"(?<![A-Za-z0-9_])" if re.match(r"\w", kw) else "") + re.escape(kw) + (
        r"(?![A-Za-z0-9_])" if re.search(r"\w$", kw) else "")
    return re.search(pat, msg, flags) is not None


def _describe(res):
    if isinstance(res, dict) and "rc" in res:
        return f"rc={res['rc']}"
    if hasattr(res, "shape"):
        return f"array {tuple(res.shape)} {res.dtype}"
    return type(res).__name__


# ======================================================================================
# 1. Noise schedules
# ======================================================================================

C("sch-01", "use(VPLinear(beta_min=-1.0))", ["beta_min"])
C("sch-02", "use(VPLinear(beta_min=0.0))", ["beta_min"], sched_ok,
  note="beta_min = 0 is a valid (if unusual) VP schedule")
C("sch-03", "use(VPLinear(beta_max=0.0))", ["beta_max"])
C("sch-04", "use(VPLinear(beta_max=-20.0))", ["beta_max"])
C("sch-05", "use(VPLinear(beta_min=nan))", ["beta_min"])
C("sch-06", "use(VPLinear(beta_max=inf))", ["beta_max"])
C("sch-07", "use(VPLinear(beta_max='20'))", ["beta_max"])
C("sch-08", "use(VPLinear(beta_max=True))", ["beta_max"], sched_ok,
  note="True is 1.0: a weak but valid schedule")
C("sch-09", "use(VPLinear(beta_min=20.0, beta_max=-5.0))", ["beta"],
  note="beta(t) turns negative inside [0, 1]")
C("sch-10", "use(VPLinear(beta_min=30.0, beta_max=20.0))", ["beta"], sched_ok,
  note="decreasing but positive beta: still a valid schedule")
C("sch-11", "use(VPLinear(beta_max=20))", ["beta_max"], sched_ok)
C("sch-12", "use(VPLinear(t_min=0.5, t_max=0.1))", ["t_min", "t_max"])
C("sch-13", "use(VPLinear(t_min=-0.1))", ["t_min"])
C("sch-14", "use(VPLinear(t_max=2.0))", ["t_max"], sched_ok,
  note="VPLinear extends past t = 1 by its formula")
C("sch-15", "use(VPCosine(s=-0.5))", ["s"])
C("sch-16", "use(VPCosine(s=nan))", [" s "])
C("sch-17", "use(VPCosine(s='0.008'))", [" s "])
C("sch-18", "use(VPCosine(t_max=1.0))", ["t_max", "alpha = 0", "lam = -inf"])
C("sch-19", "use(VE(sigma_min=0.0))", ["sigma_min"])
C("sch-20", "use(VE(sigma_min=-1.0))", ["sigma_min"])
C("sch-21", "use(VE(sigma_min=50.0, sigma_max=0.01))", ["sigma_min", "sigma_max"])
C("sch-22", "use(VE(sigma_max=nan))", ["sigma_max"])
C("sch-23", "use(VE(sigma_min='0.01'))", ["sigma_min"])
C("sch-24", "EDM(sigma_min=-1.0)", ["sigma_min"])
C("sch-25", "EDM(80.0, 0.002)", ["sigma_min", "sigma_max"])
C("sch-26", "EDM(sigma_max=nan)", ["sigma_max"])
C("sch-27", "use(EDM(sigma_max=inf))", ["sigma_max"])
C("sch-28", "EDM(sigma_max='80')", ["sigma_max"])
C("sch-29", "use(RectifiedFlow(t_max=1.0))", ["t_max", "alpha = 0"])
C("sch-30", "use(RectifiedFlow(t_min=0.0))", ["t_min", "sigma = 0"])
C("sch-31", "DiscreteVP([])", ["betas"])
C("sch-32", "use(DiscreteVP(np.linspace(0.02, 1e-4, 1000)))", ["betas"], sched_ok,
  note="reversed betas still give a decreasing alpha_bar: valid")
C("sch-33", "DiscreteVP(np.array([0.01, nan, 0.02]))", ["betas"])
C("sch-34", "DiscreteVP(np.array([0.1, 1.5, 0.2]))", ["betas"])
C("sch-35", "DiscreteVP(np.full((10, 10), 0.01))", ["betas"])
C("sch-36", "DiscreteVP(alphas_cumprod=[0.9, 0.95, 0.5])", ["alphas_cumprod"])
C("sch-37", "DiscreteVP()", ["betas", "alphas_cumprod"])
C("sch-38", "DiscreteVP(['a', 'b'])", ["betas"])
C("sch-39", "DiscreteVP(np.full(10, -0.1))", ["betas"])
C("sch-40", "DiscreteVP.linear(n=1)", ["betas", "n"])
C("sch-41", "DiscreteVP.linear(n=2.5)", ["n"])
C("sch-42", "DiscreteVP.linear(t_min=0.5, t_max=0.1)", ["t_min", "t_max"])
C("sch-43", "use(DiscreteVP.linear(beta_start=0.02, beta_end=0.5, n=1000))", ["beta"],
  note="alpha_bar underflows to 0 well before the end")
C("sch-44", "use(LogSNRShift(VP, 0.0))", ["shift"])
C("sch-45", "use(shifted(VP, -3.0))", ["shift"])
C("sch-46", "use(shifted(VP, nan))", ["shift"])
C("sch-47", "use(shifted(VP, '3'))", ["shift"])
C("sch-48", "use(shifted(VP, jnp.array(-3.0)))", ["shift"],
  note="a jax-array shift skips the positive check")
C("sch-49", "use(shifted(None, 3.0))", ["schedule", "base"])
C("sch-50", "use(shifted(RectifiedFlow(), 3))", ["shift"], sched_ok)
C("sch-51", "DiscreteVP(alphas_cumprod=jnp.array([1.0, 0.5, 0.1]))", ["alphas_cumprod"])

# ======================================================================================
# 2. Step schedules
# ======================================================================================

for i, bad in enumerate(["0", "-1", "2.5", "'5'", "True", "nan", "np.int64(5)", "None"]):
    C(f"stp-k{i}", f"karras(VP, {bad})", ["n_steps"],
      check=plan_ok if bad == "np.int64(5)" else finite)
for fn in ["uniform_logsnr", "time_quadratic", "polyexponential", "kl_optimal",
           "uniform_time", "exponential"]:
    C(f"stp-{fn}-0", f"{fn}(VP, 0)", ["n_steps"])
    C(f"stp-{fn}-float", f"{fn}(VP, 2.5)", ["n_steps"])
C("stp-01", "karras(VP, 5, rho=0)", ["rho"])
C("stp-02", "karras(VP, 5, rho=-1.0)", ["rho"])
C("stp-03", "karras(VP, 5, rho=nan)", ["rho"])
C("stp-04", "karras(VP, 5, rho='7')", ["rho"])
C("stp-05", "polyexponential(VP, 5, rho=0.0)", ["rho"])
C("stp-06", "polyexponential(VP, 5, rho=-1.0)", ["rho"])
C("stp-07", "polyexponential(VP, 5, rho=nan)", ["rho"])
C("stp-08", "kl_optimal(VP, 5, data_std=0.0)", ["data_std"])
C("stp-09", "kl_optimal(VP, 5, data_std=-1.0)", ["data_std"])
C("stp-10", "kl_optimal(VP, 5, data_std=nan)", ["data_std"])
C("stp-11", "uniform_logsnr(VP, 5, t_start=0.1, t_end=0.5)", ["t_start"])
C("stp-12", "uniform_logsnr(VP, 5, t_start=2.0)", ["t_start", "range"])
C("stp-13", "uniform_logsnr(VP, 5, t_end=-0.1)", ["t_end", "range"])
C("stp-14", "uniform_logsnr(VP, 5, t_start=nan)", ["t_start"])
C("stp-15", "uniform_logsnr(VP, 5, t_start=jnp.array([1.0, 0.5]))", ["t_start"])
C("stp-16", "uniform_logsnr(VP, 5, t_end=0.0)", ["t_end"])
C("stp-17", "uniform_logsnr(RectifiedFlow(), 5, t_start=1.0)", ["t_start"])
C("stp-18", "karras(VE(), 5, append_zero=True)", ["append_zero", "sigma = 0"])
C("stp-19", "align_your_steps(VP, 10, model='sd3')", ["model"])
C("stp-20", "align_your_steps(EDMS, 10, model='svd')", ["svd", "sigma_max", "range", "700"],
  note="SVD table reaches sigma 700, EDM() stops at 80")
C("stp-21", "align_your_steps(VP, 0)", ["n_steps"])
C("stp-22", "discrete_spacing(VP, 10)", ["DiscreteVP"])
C("stp-23", "discrete_spacing(DVP, 10, 'uniform')", ["spacing"])
C("stp-24", "discrete_spacing(DVP, 2000)", ["steps"])
C("stp-25", "discrete_spacing(DVP, 10, 'leading', steps_offset=5000)", ["steps_offset"])
C("stp-26", "discrete_spacing(DVP, 10, final='none')", ["final"])
C("stp-27", "discrete_spacing(DVP, 10, 'leading', steps_offset=-5)", ["steps_offset"])
C("stp-28", "discrete_spacing(DVP, 10, 'leading', steps_offset=2.5)", ["steps_offset"],
  integer_labels)
C("stp-29", "sgm_uniform(VE(), 5)", ["sigma = 0"])
C("stp-30", "custom(VP, [1.0, 0.5, 0.5, 0.1])", ["decreasing"])
C("stp-31", "custom(VP, [0.1, 0.5, 1.0])", ["decreasing"])
C("stp-32", "custom(VP, [1.0, nan, 0.1])", ["finite"])
C("stp-33", "custom(VP, [1.0])", ["timesteps"])
C("stp-34", "custom(VP, [[1.0, 0.5], [0.4, 0.1]])", ["1-D"])
C("stp-35", "custom(VP, [2.0, 0.5])", ["range"])
C("stp-36", "custom(VP, ['1.0', '0.5'])", ["timesteps"])
C("stp-37", "custom(VP, [1, 0])", ["timesteps"], plan_ok,
  note="integer times 1 -> 0 are valid (t = 0 has sigma = 0 only at the end)")
C("stp-38", "uniform_logsnr(VP, 5, t_start='1.0')", ["t_start"])
C("stp-39", "karras(VP, 10**7)", ["n_steps", "float32", "resolution", "too many"], plan_ok,
  note="ten million steps: more than float32 times can hold")

# ======================================================================================
# 3. Solver constructors
# ======================================================================================

for i, bad in enumerate(["0", "5", "2.5", "'2'", "True"]):
    C(f"sol-dpmpp-order{i}", f"run_ts(dpm_solver_pp, TS20, order={bad})", ["order"],
      near_ref(0.05, "REF20"))
    C(f"sol-unipc-order{i}", f"run_ts(unipc, TS20, order={bad})", ["order"],
      near_ref(0.05, "REF20"))
for i, bad in enumerate(["0", "5", "2.5", "'2'"]):
    C(f"sol-deis-order{i}", f"run_ts(deis, TS20, order={bad})", ["order"],
      near_ref(0.05, "REF20"))
C("sol-01", "dpm_solver(VP, TS, order=4)", ["order"])
C("sol-02", "ipndm(VP, TS, order=0)", ["order"])
C("sol-03", "ipndm(VP, TS, order=5)", ["order"])
C("sol-04", "pndm(VP, TS, method='x')", ["method"])
C("sol-05", "sa_solver(VP, TS, predictor_order=0)", ["predictor_order"])
C("sol-06", "er_sde(VP, TS, order=4)", ["order"])
C("sol-07", "sde_dpm_solver_pp(VP, TS, order=4)", ["order"])
C("sol-08", "dpm_solver_pp(VP, TS, solver_type='foo')", ["solver_type"])
C("sol-09", "dpm_solver_pp(VP, TS, method='foo')", ["method"])
C("sol-10", "dpm_solver_pp(VP, TS, prediction='x0')", ["prediction"])
C("sol-11", "unipc(VP, TS, variant='bh3')", ["variant"])
C("sol-12", "deis(VP, TS, method='foo')", ["method"])
C("sol-13", "dpm_solver_pp(VP, TS, third_order='foo')", ["third_order"])
C("sol-14", "dpm_solver_pp(VP, TS, lower_order_final='yes')", ["lower_order_final"])
C("sol-15", "dpm_solver_pp(VP, TS, afs='false')", ["afs"])
C("sol-16", "unipc(VP, TS, corrector='false')", ["corrector"])
C("sol-17", "unipc(VP, TS, predict_x0='no')", ["predict_x0"])
C("sol-18", "heun(VP, TS, final_euler='no')", ["final_euler"])
C("sol-19", "usf(VP, TS, [Step('x0', 2, False)] * 6)", ["prediction"])
C("sol-20", "usf(VP, TS, Step('data', 0, False))", ["order"])
C("sol-21", "usf(VP, TS, Step('data', 2.5, False))", ["order"])
C("sol-22", "usf(VP, TS, [Step()] * 3)", ["step"])
C("sol-23", "usf(VP, TS, 'data')", ["step"])
C("sol-24", "usf(VP, TS, Step('data', 2, 'false'))", ["corrector"],
  same_as("usf(VP, TS, Step('data', 2, False))"),
  note="the string 'false' is truthy: the plan equals Step('data', 2, True)")
C("sol-25", "ddim(VP, [1.0, 0.5, 0.7, 0.1])", ["decreasing"])
C("sol-26", "ddim(VP, [1.0, 0.5, 0.5, 0.1])", ["decreasing"])
C("sol-27", "ddim(VP, [1.0, nan, 0.1])", ["finite"])
C("sol-28", "ddim(VP, [1.0])", ["timesteps"])
C("sol-29", "ddim(VP, jnp.ones((2, 3)))", ["1-D"])
C("sol-30", "ddim(VP, [1.5, 0.5, 0.1])", ["range"], note="t > t_hi = 1 for VPLinear")
C("sol-31", "ddim(VP, [1.0, 0.5, -0.1])", ["range"])
C("sol-32", "run_ts(ddim, [1, 0])", ["timesteps"], finite,
  note="ints, one DDIM step to t = 0 (gives the data mean: correct)")
C("sol-33", "dpm_solver_pp(VP, TS[:2], order=3)", ["order", "step"], plan_ok,
  note="order 3 on one step: lowered to order 1, fine")
C("sol-34", "dpm_solver_pp(VP, 'TS')", ["timesteps"])
C("sol-35", "ddim(VP, None)", ["timesteps"])
C("sol-36", "ddim('VP', TS)", ["schedule"])
C("sol-37", "ddim(None, TS)", ["schedule"])
C("sol-38", "run_ts(ddim, TS[::-1])", ["decreasing"])
# stochastic options
C("sol-40", "ddim_eta(VP, TS, eta=-1.0)", ["eta"])
C("sol-41", "ddim_eta(VP, TS, eta=nan)", ["eta"])
C("sol-42", "ddim_eta(VP, TS, eta='0.5')", ["eta"], same_as("ddim_eta(VP, TS, eta=0.5)"))
C("sol-43", "euler_ancestral(VP, TS, eta=-1.0)", ["eta"])
C("sol-44", "euler_ancestral(VP, TS, s_noise=nan)", ["s_noise"])
C("sol-45", "sde_dpm_solver_pp(VP, TS, eta=-1.0)", ["eta"])
C("sol-46", "er_sde(VP, TS, s_noise=-1.0)", ["s_noise"])
C("sol-47", "sa_solver(VP, TS, tau=-1.0)", ["tau"], same_as("sa_solver(VP, TS, tau=1.0)"),
  note="tau enters squared: -1 is the same as 1")
C("sol-48", "sa_solver(VP, TS, tau=nan)", ["tau"])
C("sol-49", "sa_solver(VP, TS, mode='foo')", ["mode"])
C("sol-50", "edm_stochastic(EDMS, EDM_TS, S_churn=-1.0)", ["S_churn"])
C("sol-51", "edm_stochastic(EDMS, EDM_TS, S_churn=nan)", ["S_churn"])
C("sol-52", "edm_stochastic(EDMS, EDM_TS, S_churn='40')", ["S_churn"],
  same_as("edm_stochastic(EDMS, EDM_TS, S_churn=40.0)"))
C("sol-53", "edm_stochastic(EDMS, EDM_TS, S_noise=-1.0)", ["S_noise"])
C("sol-54", "edm_stochastic(EDMS, EDM_TS, S_churn=40.0, S_tmin=5.0, S_tmax=1.0)",
  ["S_tmin", "S_tmax"], differs_from("edm_stochastic(EDMS, EDM_TS, S_churn=0.0)"),
  note="an empty churn window")
C("sol-55", "edm_stochastic(EDMS, EDM_TS, solver='rk4')", ["solver"])
C("sol-56", "restart(EDMS, EDM_TS, [RestartInterval(0.5, 0.1, 2, 3)])", ["t_min", "t_max"])
C("sol-57", "restart(EDMS, EDM_TS, [RestartInterval(0.1, 0.5, -1, 3)])", ["K"])
C("sol-58", "restart(EDMS, EDM_TS, [RestartInterval(0.1, 0.5, 2, 1)])", ["n_steps"])
C("sol-59", "restart(EDMS, EDM_TS, 'foo')", ["intervals"])
C("sol-60", "restart_edm({'foo': 1})", ["foo"])
C("sol-61", "restart_edm(bogus=3)", ["bogus"])
C("sol-62", "restart(EDMS, EDM_TS, [RestartInterval(0.1, 0.5, 2.5, 3)])", ["K"])
C("sol-63", "euler_ancestral(VP, TS, eta='1')", ["eta"],
  same_as("euler_ancestral(VP, TS, eta=1.0)"))
C("sol-64", "sa_solver(VP, TS, tau='1')", ["tau"], same_as("sa_solver(VP, TS, tau=1.0)"))
# plan_for_nfe, registry, presets, stacking
for i, bad in enumerate(["0", "-3", "2.5", "'5'", "True", "nan", "10**7"]):
    C(f"sol-nfe{i}", f"plan_for_nfe('ddim', VP, {bad})", ["nfe"])
C("sol-70", "plan_for_nfe('foo', VP, 5)", ["solver"])
C("sol-71", "plan_for_nfe('ddim', VP, 5, 'foo')", ["step schedule"])
C("sol-72", "plan_for_nfe('heun', VP, 4)", ["nfe", "feasible"])
C("sol-73", "plan_for_nfe('ddim', VP, 5, t_start=0.1, t_end=0.5)", ["t_start"])
C("sol-74", "plan_for_nfe('heun', VP, 10**9)", ["nfe", "feasible"])
C("sol-75", "get_solver('foo')", ["solver"])
C("sol-76", "dpm_solver_fast(VP, 0)", ["nfe"])
C("sol-77", "dpm_solver_fast(VP, 2.5)", ["integer", "int"],
  note="the message must say 2.5 is not an integer (not 'too small')")
C("sol-77b", "dpm_solver_fast(VP, 5.5)", ["integer", "int"])
C("sol-78", "dpm_solver_fast(VP, 5, order=4)", ["order"])
C("sol-79", "stack_plans([])", ["plan"])
C("sol-80", "stack_plans([P, ddim(VP, TS[:3])])", ["nfe"])
C("sol-81", "stack_plans([P, 'x'])", ["plan"])
C("sol-82", "diffusers_preset('FooScheduler', 10)", ["scheduler"])
C("sol-83", "diffusers_preset('DDIMScheduler', 0)", ["num_inference_steps", "steps"])
C("sol-84", "diffusers_preset('DDIMScheduler', 10, bogus_key=1)", ["bogus_key"])
C("sol-85", "comfyui_preset('euler', 'foo', 10)", ["scheduler"])
C("sol-86", "comfyui_preset('foo', 'normal', 10)", ["sampler"])
C("sol-87", "comfyui_preset('euler', 'normal', 0)", ["steps"])
C("sol-88", "diffusers_preset('DDIMScheduler', 2.5)", ["num_inference_steps", "steps"])
C("sol-89", "plan_for_nfe('ddim', VP, np.int64(5))", ["nfe"], plan_ok)

# ======================================================================================
# 4. samplax.sample
# ======================================================================================

C("smp-01", "run(P, x=XT.at[0, 0].set(nan))", ["x_T"], note="unchecked mode by default")
C("smp-02", "run(P, x=XT.at[0, 0].set(nan), check=True)", ["x_T"])
C("smp-03", "run(P, x=jnp.ones((3, 4), int))", ["x_T", "dtype"])
C("smp-04", "run(P, den=lambda x, t: jnp.zeros((3, 4)), x=jnp.ones((3, 5)))", ["shape"])
C("smp-05", "run(P, den=lambda x, t: (DEN(x, t), DEN(x, t)))", ["denoiser"])
C("smp-06", "run(P, den=lambda x, t: [DEN(x, t)])", ["denoiser"])
C("smp-07", "run(P, den=lambda x, t: None)", ["denoiser"])
C("smp-08", "run(P, den=lambda x, t: DEN(x, t)[:, :2])", ["denoiser", "shape"])
C("smp-09", "run(P, den=lambda x, t: jnp.round(DEN(x, t)).astype(jnp.int32))",
  ["denoiser returned dtype"])
C("smp-10", "run(P, den=lambda x, t: 0.0)", ["denoiser", "shape"])
C("smp-11", "run(P_SDE)", ["key"])
C("smp-12", "run(P_SDE, key=0)", ["key"])
C("smp-13", "run(P_SDE, key=jnp.array([0.5, 0.2]))", ["key"])
C("smp-14", "run(P_SDE, key=jax.random.PRNGKey(0))", ["key"], plausible,
  note="a legacy uint32 key works")
C("smp-15", "run(stack_plans([P, P]))", ["stacked", "batch"])
C("smp-16", "run({'t': P.t})", ["plan"])
C("smp-17", "run([P])", ["plan"])
C("smp-18", "run(None)", ["plan"])
C("smp-19", "run(P, den='DEN')", ["denoiser"])
C("smp-20", "run(P, x=XT.tolist())", ["x_T"], same_as("CTRL"), note="a nested list is fine")
C("smp-21", "run(P, x=jnp.asarray(1.0))", ["x_T"], note="0-d x_T")
C("smp-22", "run(P, den=lambda x: DEN(x, 1.0))", ["denoiser"])
C("smp-23", "run(P, key=KEY)", ["key"], same_as("CTRL"), note="key on a deterministic plan")
C("smp-24", "run(P, hook=lambda *a: a, key=KEY)", ["hook"])
C("smp-25", "run(P, den=Segments((DEN,), (1,)))", ["Segments", "starts"])
C("smp-26", "run(P, den=lambda x, t: DEN(x, t).astype(jnp.bfloat16))", ["dtype"], finite,
  note="lower precision output, cast back")
C("smp-27", "run(P, x=XT.astype(jnp.float16))", ["dtype"], finite)
# Traced values are checked in sample(check=True) (off by default: free when off)
C("smp-28", "run(P, den=lambda x, t: jnp.where(t < 0.3, jnp.nan, DEN(x, t)), check=True)",
  ["slot"], note="a model that returns NaN below t=0.3, checked")
C("smp-29", "run(P, x=XT[None])", ["shape"], note="extra leading axis: GM handles it")
C("smp-30", "run(P_SDE, key=jax.random.split(KEY, 2))", ["key"])
C("smp-31", "run(P, den=lambda x, t: DEN(x, t)[:, None])", ["shape"])
C("smp-32", "run(P, x=np.ones((3, 4), np.float64) * np.asarray(XT))", ["x_T"], finite,
  note="float64 numpy x_T with x64 off: cast")
C("smp-34", "run(P, x=XT * 1e30, check=True)", ["slot", "x_T"],
  note="overflowing input, checked")

# ======================================================================================
# 5. Guidance
# ======================================================================================

PAIR = pair(DEN, COND)
C("gui-01", "guided(cfg(PAIR, nan))", ["scale"])
C("gui-02", "guided(cfg(PAIR, inf))", ["scale"])
C("gui-03", "guided(cfg(PAIR, '7'))", ["scale"])
C("gui-04", "guided(cfg(PAIR, -3.0))", ["scale"], plausible,
  note="negative weight is a legal (odd) extrapolation")
C("gui-05", "guided(cfg(PAIR, 3.0, rescale=0.7, rescale_space='foo', schedule=VP))",
  ["rescale_space", "space"])
C("gui-06", "guided(cfg(PAIR, 3.0, rescale=0.7))", ["schedule"])
C("gui-07", "guided(cfg(PAIR, 3.0, rescale=nan, schedule=VP))", ["rescale"])
C("gui-08", "guided(cfg(PAIR, 3.0, rescale='0.7', schedule=VP))", ["rescale"])
C("gui-09", "guided(cfg(DEN, 3.0))", ["branches"],
  note="a denoiser passed where branches are expected")
C("gui-10", "guided(cfg(DEN, 3.0), x=XT[:2])", ["branches"],
  note="same mistake, batch of 2: the batch is split into cond/uncond")
C("gui-11", "guided(cfg(pair(DEN, 'notfn'), 3.0))", ["uncond", "denoiser"])
C("gui-12", "weight_schedule('foo', 3.0)", ["weight schedule", "kind"])
C("gui-13", "guided(cfg(PAIR, weight_schedule('linear', 3.0, t_max=0.0)))", ["t_max"])
C("gui-14", "guided(cfg(PAIR, weight_schedule('linear', '3')))", ["w"])
C("gui-15", "dynamic_threshold(DEN, p=0.0)", [" p "])
C("gui-16", "dynamic_threshold(DEN, p=1.5)", [" p "])
C("gui-17", "dynamic_threshold(DEN, p=nan)", [" p "])
C("gui-18", "dynamic_threshold(DEN, p='0.9')", [" p "])
C("gui-19", "dynamic_threshold(DEN, max_value=0.5)", ["max_value"])
C("gui-20", "static_threshold(DEN, lo=1.0, hi=-1.0)", ["lo"])
C("gui-21", "static_threshold(DEN, lo=nan)", ["lo"])
C("gui-22", "guided(static_threshold(DEN, lo=-inf, hi=inf))", ["lo"], plausible)
C("gui-23", "guidance_interval(P, cfg(PAIR, 3.0), DEN, 5.0, 1.0)", ["sigma_lo"])
C("gui-24", "guided(guidance_interval(P, cfg(PAIR, 3.0), DEN, nan, 1.0))", ["sigma_lo"],
  not_ctrl)
C("gui-25", "guided(guidance_interval(P, cfg(PAIR, 3.0), DEN, 1e6, 1e7))",
  ["sigma_lo", "interval", "slot"], not_ctrl,
  note="a window above the schedule's largest sigma (~152): no slot is guided")
C("gui-26", "cads(KEY, tau1=0.9, tau2=0.6)", ["tau1"])
C("gui-27", "cads(KEY, psi=2.0)", ["psi"])
C("gui-28", "cads(KEY, tau1=nan)", ["tau1"])
C("gui-29", "guided(cfg(branches(CMODEL, EMB, NULL, anneal=cads(KEY, noise_scale=nan)), 3.0))",
  ["noise_scale"])
C("gui-30", "float(cads(KEY, t_max=0.0).gamma(0.5))", ["t_max"], gamma_check,
  note="t_max = 0 divides the progress t/t_max by zero")
C("gui-31", "guided(cfg(branches(CMODEL, EMB, NULL, anneal=cads(0)), 3.0))", ["key"])
C("gui-31b", "guided(cfg(branches(CMODEL, EMB, NULL, anneal=cads(KEY, tau1=-1.0, tau2=0.5)), 3.0))",
  ["tau1"])
C("gui-32", "cfg_pp(PAIR, 2.0, VP, TS)", ["lam"])
C("gui-33", "cfg_pp(PAIR, nan, VP, TS)", ["lam"])
C("gui-34", "apg(PAIR, 3.0, space='foo', schedule=VP)", ["space"])
C("gui-35", "guided(apg(PAIR, 3.0, momentum=nan))", ["momentum"])
C("gui-36", "guided(apg(PAIR, 3.0, norm_threshold=-1.0))", ["norm_threshold"])
C("gui-37", "guided(classifier_guidance(DEN, 'notfn', VP, scale=1.0))", ["log_prob"])
C("gui-38", "guided(classifier_guidance(DEN, lambda x, t: jnp.sum(x, -1), VP, scale=nan))",
  ["scale"])
C("gui-39", "dps(DEN, VP, lambda x: x, XT)", ["noise_std", "zeta"])
C("gui-40", "tfg(DEN, lambda x: -jnp.sum(x**2, -1), VP, TS, n_iter=-1)", ["n_iter"])
C("gui-41", "fk_steering(DEN, P, XT, KEY, lambda x: -jnp.sum(x**2, -1), potential='foo')",
  ["potential"])
C("gui-42", "fk_steering(DEN, P, XT, KEY, lambda x: -jnp.sum(x**2, -1), method='foo')",
  ["method"])
C("gui-43", "fk_steering(DEN, P, XT, KEY, lambda x: -jnp.sum(x**2, -1), lam=nan)", ["lam"])
C("gui-44", "fk_steering(DEN, P, XT, KEY, lambda x: -jnp.sum(x**2, -1), "
  "ess_threshold=2.0).samples", ["ess_threshold"])
C("gui-45", "fk_steering(DEN, P, XT, KEY, lambda x: jnp.sum(x**2)).samples",
  ["reward"], note="reward returns one scalar instead of one per particle")
C("gui-46", "resample(KEY, jnp.zeros(4), method='foo')", ["method"])
C("gui-47", "steering_slots(5, every=0)", ["every"])
C("gui-48", "guided(eps_scaling(DEN, VP, factor=nan))", ["factor"])
C("gui-49", "guided(eps_scaling(DEN, VP, factor='1.005'))", ["factor"])
C("gui-50", "time_shift(DEN, VP, window=-1)", ["window"])
C("gui-51", "guided(eps_scaling(DEN, VP, factor=0.0))", ["factor"])
C("gui-52", "fk_steering(DEN, P, XT, KEY, lambda x: -jnp.sum(x**2, -1), every=0)",
  ["every"])
C("gui-53", "guided(cfg(PAIR, jnp.array([1.0, 2.0])))", ["scale"],
  note="a 2-vector scale against a batch of 3")
C("gui-54", "tfg(DEN, lambda x: -jnp.sum(x**2, -1), VP, TS, gamma=1.0)", ["key"])

# ======================================================================================
# 6. Adapters
# ======================================================================================

C("ada-01", "from_prediction(EPS_MODEL, VP, 'eps')", ["prediction_type"])
C("ada-02", "from_prediction(EPS_MODEL, VP, ['epsilon'])", ["prediction_type"])
C("ada-03", "from_prediction(EPS_MODEL, VP, None)", ["prediction_type"])
C("ada-04", "from_epsilon(EPS_MODEL, VP, time_input='foo')", ["time_input"])
C("ada-05", "from_epsilon(EPS_MODEL, VP, time_input='label')", ["time_input", "label"])
C("ada-06", "from_epsilon(EPS_MODEL, VP, time_input=5)", ["time_input"])
C("ada-07", "guided(from_epsilon('notfn', VP))", ["model"])
C("ada-08", "guided(from_v(EPS_MODEL, 'VP'))", ["schedule"])
C("ada-09", "guided(from_epsilon(EPS_MODEL, None))", ["schedule"])
C("ada-10", "guided(from_epsilon(EPS_MODEL, VP))", [], same_as("CTRL", 1e-3),
  note="control: an epsilon model through the adapter")
C("ada-11", "guided(from_epsilon(lambda x, t: None, VP))", ["model"])
C("ada-12", "guided(from_epsilon(lambda x: x, VP))", ["model"])
C("ada-13", "guided(from_score(EPS_MODEL, VP, time_input=lambda t: 'x'))", ["time_input"])
C("ada-14", "from_prediction(EPS_MODEL, VP, 'EPSILON')", ["prediction_type"])

# ======================================================================================
# 7. JSON loaders
# ======================================================================================

C("jsn-01", "load_result(os.path.join(TMP, 'missing.json'))", ["missing.json"])
C("jsn-02", "load_result(write('empty.json', ''))", ["json"])
C("jsn-03", "load_result(write('trunc.json', open(SAVED).read()[:300]))", ["json"])
C("jsn-04", "load_result(write('text.json', 'hello'))", ["json"])
C("jsn-05", "load_result(write('list.json', '[1, 2]'))", ["schema", "search result"])
C("jsn-06", "load_result(broken(lambda o: o.pop('schema')))", ["schema"])
C("jsn-07", "load_result(broken(lambda o: o['steps'][0].update(corrector='false')))",
  ["corrector"])
C("jsn-08", "load_result(broken(lambda o: o['steps'][0].update(order=3.7)))", ["order"])
C("jsn-09", "load_result(broken(lambda o: o.update(nfe=5.0)))", ["nfe"])
C("jsn-10", "load_plan(broken(lambda o: o['timesteps'].__setitem__(2, nan)), VP)",
  ["timesteps"])
C("jsn-11", "load_plan(broken(lambda o: o['timesteps'].__setitem__(2, 'a')), VP)",
  ["timesteps"])
C("jsn-12", "load_plan(broken(lambda o: o['timesteps'].__setitem__(2, 0.9)), VP)",
  ["timesteps", "decreasing"])
C("jsn-13", "load_result(times_only(solver='foo'))", ["solver"])
C("jsn-14", "load_plan(times_only(timesteps=[1.0, 0.5, nan, 0.05, 0.01, 0.001]), VP)",
  ["timesteps", "finite"])
C("jsn-15", "load_plan(broken(lambda o: o.update(coefficients=[[1.0]])), VP)",
  ["coefficients"])
C("jsn-16", "load_plan(broken(lambda o: o.update(model_times=[0.5])), VP)", ["model_times"])
C("jsn-17", "load_plan(broken(lambda o: o.update(tuned_plan={'t': 'x'})), VP)",
  ["tuned_plan"])
C("jsn-18", "load_plan(SAVED, VPLinear(beta_max=10.0))", ["beta_max"])
C("jsn-19", "load_plan(SAVED, VE())", ["VE", "VPLinear", "schedule"])
C("jsn-20", "load_plan(SAVED, VP, nfe=2.5)", ["nfe"])
C("jsn-21", "load_plan(SAVED, VP, nfe=0)", ["nfe"])
C("jsn-22", "load_plan(SAVED, VP, nfe='5')", ["nfe"])
C("jsn-23", "resize_result(load_result(SAVED), -3, VP)", ["nfe"])
C("jsn-24", "export_schedule(load_result(SAVED), VP, 'foo')", ["format"])
C("jsn-25", "load_result(broken(lambda o: o.update(afs='false')))", ["afs"])
C("jsn-26", "load_result(broken(lambda o: o.update(steps={'a': 1})))", ["steps"])
C("jsn-27", "load_result(times_only(nfe=3.7))", ["nfe"])
C("jsn-28", "load_plan(times_only(timesteps=[1.0, 0.5, 0.7, 0.05, 0.01, 0.001]), VP)",
  ["timesteps", "decreasing"])
C("jsn-29", "load_plan(broken(lambda o: o['schedule']['fields'].update(beta_max='20')), VP)",
  ["beta_max"])
C("jsn-30", "load_plan(broken(lambda o: o.update(schedule='VPLinear')), VP)", ["schedule"])
C("jsn-31", "load_plan(broken(lambda o: o['tuned_plan']['evaluate'].update("
  "x=[[nan] * 3] * 5)), VP)", ["tuned_plan", "finite"])
C("jsn-32", "load_result(write('bin.json', '\\x00\\xff garbage'))", ["json"])
C("jsn-33", "load_plan(broken(lambda o: o.update(coefficients='abc')), VP)",
  ["coefficients"])
C("jsn-34", "load_result(broken(lambda o: o.update(nfe=-5)))", ["nfe"])
C("jsn-35", "run_saved(broken(lambda o: (o.pop('tuned_plan'), o.update(model_times=[nan] * 5))))",
  ["model_times"], note="NaN network times in a result without tuned_plan")
C("jsn-39", "run_saved(broken(lambda o: o['tuned_plan'].update(t=[nan] * 5)))",
  ["tuned_plan"])
C("jsn-40", "run_saved(broken(lambda o: o.update(coefficients=[[nan] * 3] * 6)))",
  ["coefficients"])
C("jsn-41", "run_saved(broken(lambda o: (o.pop('tuned_plan'), "
  "o.update(coefficients=[[nan] * 3] * 6))))", ["coefficients"],
  note="NaN free coefficients in a result without tuned_plan")
C("jsn-42", "run_saved(broken(lambda o: o.update(model_times=[0.9, 0.1, 0.5, 0.3, 0.2])))",
  ["model_times"], same_as("run_saved(SAVED)"),
  note="model_times disagree with tuned_plan.t, which wins silently")
C("jsn-36", "load_plan(broken(lambda o: o['timesteps'].__setitem__(0, 5.0)), VP)",
  ["timesteps", "range"])
C("jsn-37", "load_result(TMP)", ["directory", TMP])
C("jsn-38", "load_plan(times_only(solver='heun', nfe=4), VP)", ["nfe", "heun"])

# ======================================================================================
# 8. CLI
# ======================================================================================

# sample
L("cli-s01", f"sample --nfe 0 --n 4 --out {out('a.npy')}", ["nfe"])
L("cli-s02", f"sample --nfe -1 --n 4 --out {out('a.npy')}", ["nfe"])
L("cli-s03", f"sample --nfe 2.5 --n 4 --out {out('a.npy')}", ["nfe"])
L("cli-s04", f"sample --nfe abc --n 4 --out {out('a.npy')}", ["nfe"])
L("cli-s05", f"sample --n 0 --out {out('a.npy')}", ["--n"], npy_ok(out('a.npy')))
L("cli-s06", f"sample --n -5 --out {out('a.npy')}", ["--n"], npy_ok(out('a.npy')))
L("cli-s07", f"sample --solver foo --n 4 --out {out('a.npy')}", ["solver"])
L("cli-s08", f"sample --steps foo --n 4 --out {out('a.npy')}", ["step"])
L("cli-s09", "sample --n 4 --out /nonexistent_dir/a.npy", ["nonexistent_dir"])
L("cli-s10", f"sample --n 4 --out {out('a.txt')}", ["--out"])
L("cli-s11", f"sample --n 4 --schedule {out('missing.json')} --out {out('a.npy')}",
  ["missing.json"])
L("cli-s12", f"sample --n 4 --schedule {TMP}/trunc.json --out {out('a.npy')}",
  ["json"], note="trunc.json is written by jsn-03")
L("cli-s13", f"sample --model foo --n 4 --out {out('a.npy')}", ["model"])
L("cli-s14", f"sample --model nomod_xyz:fn --n 4 --out {out('a.npy')}", ["nomod_xyz"])
L("cli-s15", f"sample --model os:nonexistent_fn --n 4 --out {out('a.npy')}",
  ["nonexistent_fn"])
L("cli-s16", f"sample --model os:getcwd --n 4 --out {out('a.npy')}", ["Problem"])
L("cli-s17", f"sample --solver heun --nfe 4 --n 4 --out {out('a.npy')}", ["nfe", "feasible"])
L("cli-s18", f"sample --seed -1 --n 4 --out {out('a.npy')}", ["seed"], npy_ok(out('a.npy')),
  note="a negative seed is a fine seed")
L("cli-s19", f"sample --model gmm64: --n 4 --out {out('a.npy')}", ["model"])
L("cli-s20", f"sample --n 4 --schedule {SAVED} --nfe 7 --out {out('a.npy')}", ["nfe"],
  npy_ok(out('a.npy')), note="--nfe is ignored with --schedule (which has NFE 5)")
L("cli-s21", f"sample --n 4 --out {TMP}", ["--out"])
L("cli-s22", f"sample --nfe 100000 --n 4 --out {out('a.npy')}", ["nfe"],
  note="1e5 steps; with --nfe 1000000000 the process was OOM-killed at 24 GB (run once by hand)")
L("cli-s23", f"sample --n 4 --schedule {TMP} --out {out('a.npy')}", ["schedule", TMP])
L("cli-s25", ["sample", "--n", "4", "--out", out("a.npy"), "--schedule", "CORR_FALSE"],
  ["corrector"], note="a schedule JSON with corrector: \"false\"")
L("cli-s26", ["sample", "--n", "4", "--out", out("a.npy"), "--schedule", "ORDER_37"],
  ["order"], note="a schedule JSON with order: 3.7")
L("cli-s27", ["sample", "--n", "4", "--out", out("a.npy"), "--schedule", "NAN_TIMES"],
  ["timesteps"], note="a schedule JSON with a NaN time")
L("cli-s28", f"sample --seed 2.5 --n 4 --out {out('a.npy')}", ["seed"])
L("cli-s24", f"sample --solver dpm_solver_3 --nfe 4 --n 4 --out {out('a.npy')}",
  ["nfe", "feasible"])
# search: every bad option should be refused before the teacher starts
SO = ["search", "--budget", "fast", "--quiet", "--out", out("s.json")]
L("cli-q01", SO + ["--nfe", "0"], ["nfe"])
L("cli-q02", SO + ["--nfe", "-1"], ["nfe"])
L("cli-q03", SO + ["--nfe", "2.5"], ["nfe"])
L("cli-q04", SO + ["--nfe", "abc"], ["nfe"])
L("cli-q05", SO + ["--nfe", "5", "--population", "0"], ["population"])
L("cli-q06", SO + ["--nfe", "5", "--population", "-2"], ["population"])
L("cli-q07", SO[:2] + ["unknown"] + SO[3:] + ["--nfe", "5"], ["budget"])
L("cli-q08", SO + ["--nfe", "5", "--max-evals", "-1"], ["max-evals"])
L("cli-q09", SO + ["--nfe", "5", "--max-evals", "0"], ["max-evals"])
L("cli-q10", SO + ["--nfe", "5", "--time-limit", "-5"], ["time-limit"])
L("cli-q11", SO + ["--nfe", "5", "--time-limit", "nan"], ["time-limit"])
L("cli-q12", SO + ["--nfe", "5", "--set", "bad"], ["--set"])
L("cli-q13", SO + ["--nfe", "5", "--set", "foo.bar=1"], ["foo"])
L("cli-q14", SO + ["--nfe", "5", "--set", "population.size=abc"], ["population.size"])
L("cli-q15", SO + ["--nfe", "5", "--set", "population.size=2.5"], ["population.size"])
L("cli-q16", SO + ["--nfe", "5", "--set", "space.orders=[7]"], ["orders"])
L("cli-q17", SO + ["--nfe", "5", "--set", "space.afs=false"], ["afs"])
L("cli-q18", SO + ["--nfe", "5", "--n-cal", "0"], ["n-cal"])
L("cli-q19", SO + ["--nfe", "5", "--n-eval", "0"], ["n-eval"])
L("cli-q20", SO + ["--nfe", "5", "--n-fit", "-1"], ["n-fit"])
L("cli-q21", SO + ["--nfe", "5", "--precision", "float16"], ["precision"])
L("cli-q22", SO + ["--nfe", "5", "--model", "unknown"], ["model"])
L("cli-q23", SO + ["--nfe", "5", "--model", "nomod_xyz:fn"], ["nomod_xyz"])
L("cli-q24", SO + ["--nfe", "5", "--metric", "foo"], ["metric"])
L("cli-q25", SO + ["--nfe", "5", "--solver", "foo"], ["times-only", "solver"])
L("cli-q26", SO + ["--nfe", "5", "--times-only"], ["solver"])
L("cli-q27", SO + ["--nfe", "4", "--times-only", "--solver", "heun"], ["nfe", "heun"])
L("cli-q28", SO + ["--nfe", "5", "--times-only", "--solver", "foo"], ["solver"])
L("cli-q29", ["search", "--budget", "fast", "--quiet", "--nfe", "5", "--out",
              "/nonexistent_dir/s.json"], ["nonexistent_dir"])
L("cli-q30", ["search", "--budget", "fast", "--quiet", "--nfe", "5", "--out", out("s.json"),
              "--checkpoint", "/nonexistent_dir/c.json"], ["nonexistent_dir"])
L("cli-q31", ["search", "--budget", "fast", "--quiet", "--nfe", "5", "--out", out("r1.json"),
              "--checkpoint", f"{TMP}/trunc.json", "--resume"], ["checkpoint", "json"],
  note="--resume with a truncated checkpoint (trunc.json from jsn-03)")
L("cli-q32", ["search", "--budget", "fast", "--quiet", "--nfe", "5", "--out", out("r2.json"),
              "--checkpoint", f"{TMP}/text.json", "--resume"], ["checkpoint", "json"],
  note="--resume with a non-JSON checkpoint (text.json from jsn-04)")
L("cli-q33", SO + ["--nfe", "5", "--generations", "-1"], ["generations"])
L("cli-q34", SO + ["--nfe", "5", "--seed", "-1"], ["seed"], reached_ok=True,
  note="a negative seed is a valid seed: reaching the teacher is right")
L("cli-q35", SO + ["--nfe", "5", "--metric", "os:getcwd"], ["metric"],
  note="a metric function with the wrong signature")
L("cli-q36", SO + ["--nfe", "100000"], ["nfe", "max-evals"],
  note="an absurd NFE for a search")
L("cli-q00", SO + ["--nfe", "5"], [], reached_ok=True, note="control: valid options")
L("cli-q41", SO + ["--nfe", "5", "--population", "1"], ["population", "elites"],
  reached_ok=True, note="elites are clamped to the population size (phases.py): valid")
L("cli-q42", SO + ["--nfe", "5", "--set", "population.elites=100"], ["elites", "max-evals"],
  note="elites are clamped to the size, but their refinement is costed: budget refusal")
L("cli-q43", SO + ["--nfe", "5", "--set", "trajectory_weight=-1"], ["trajectory_weight"])
L("cli-q44", SO + ["--nfe", "5", "--set", "space.orders=[]"], ["orders"])
L("cli-q45", SO + ["--nfe", "5", "--time-limit", "0"], ["time-limit"])
L("cli-q46", SO + ["--nfe", "5", "--n-cal", "2.5"], ["n-cal"])
L("cli-q47", SO + ["--nfe", "5", "--set", "seed=abc"], ["seed"])
L("cli-q48", SO + ["--nfe", "5", "--set", "refine.iters=1e9"], ["refine.iters"])
L("cli-q37", SO + ["--nfe", "5", "--set", "plan_fit.method=foo"], ["method"])
L("cli-q38", SO + ["--nfe", "5", "--set", "refine.lr=-1"], ["lr"])
L("cli-q39", SO + ["--nfe", "5", "--max-evals", "1e6"], ["max-evals"])
L("cli-q40", SO + ["--nfe", "5", "--model", "os:getcwd"], ["Problem"])
# compare / export
L("cli-c01", "compare --nfe 0 --quiet", ["nfe"])
L("cli-c02", "compare --n 0 --quiet", ["--n"])
L("cli-c03", f"compare --searched {out('missing.json')} --quiet", ["missing.json"])
L("cli-c04", "compare --plot /nonexistent_dir/p.png --quiet", ["nonexistent_dir"])
L("cli-c05", f"compare --searched {TMP}/trunc.json --quiet", ["json"])
L("cli-c06", f"compare --searched {SAVED} --nfe -2 --quiet", ["nfe"])
L("cli-c07", "compare --nfe 2.5 --quiet", ["nfe"])
L("cli-e01", f"export {out('missing.json')}", ["missing.json"])
L("cli-e02", f"export {SAVED} --format foo", ["format"])
L("cli-e03", f"export {TMP}/trunc.json", ["json"])
L("cli-e04", f"export {SAVED}", ["times-only", "solver", "times"],
  note="a full (not times-only) result")
L("cli-e05", ["export", "TIMES_ONLY", "--out", "/nonexistent_dir/e.json"],
  ["nonexistent_dir"])
L("cli-e06", ["export", "TIMES_ONLY", "--model", "gauss64"], ["model"])
L("cli-x01", "", ["command", "required", "invalid choice"])
L("cli-x02", "frobnicate", ["frobnicate", "invalid choice"])
L("cli-x03", "sample --bogus-flag 3", ["bogus-flag", "unrecognized"])


# ======================================================================================
# Runner
# ======================================================================================


def _prepare_files():
    """Files some CLI cases read, written up front so any subset of cases runs."""
    write("trunc.json", open(SAVED).read()[:300])
    write("text.json", "hello")
    write("empty.json", "")
    files = {
        "TIMES_ONLY": times_only("times_only_cli.json"),
        "CORR_FALSE": broken(lambda o: o["steps"][0].update(corrector="false"), "corr.json"),
        "ORDER_37": broken(lambda o: o["steps"][0].update(order=3.7), "order.json"),
        "NAN_TIMES": broken(lambda o: o["timesteps"].__setitem__(2, nan), "nant.json"),
    }
    for c in CASES:
        for k, path in files.items():
            c.expr = c.expr.replace(repr(k), repr(path))


_prepare_files()
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def main():
    only = None
    verbose = "--verbose" in sys.argv
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
    cases = [c for c in CASES if only is None or c.cid.startswith(only)]
    rows = []
    t_all = time.perf_counter()
    print(f"{'id':22s} {'api':4s} {'class':9s} {'time':>6s}  {'exception':22s} message / result")
    print("-" * 150)
    for c in cases:
        try:
            cls, exc, msg, dt = classify(c)
        except Exception as e:  # noqa: BLE001 -- never let one case stop the probe
            cls, exc, msg, dt = "unclear", type(e).__name__, f"probe error: {e}", 0.0
        rows.append((c, cls, exc, msg, dt))
        print(f"{c.cid:22s} {c.api:4s} {cls:9s} {dt:6.2f}  {exc[:22]:22s} {msg[:150]}",
              flush=True)
        if verbose:
            print(f"{'':22s} call: {c.expr}" + (f"   [{c.note}]" if c.note else ""))
    print("-" * 150)
    counts = {}
    for _, cls, *_ in rows:
        counts[cls] = counts.get(cls, 0) + 1
    total = time.perf_counter() - t_all
    print(f"{len(rows)} cases in {total:.0f} s: " +
          ", ".join(f"{k} {counts.get(k, 0)}"
                    for k in ("clear", "sensible", "silent", "unclear", "slow")))
    print("\nNot clear/sensible:")
    for c, cls, exc, msg, dt in rows:
        if cls in ("silent", "unclear", "slow"):
            print(f"  [{cls}] {c.cid}: {c.expr}" + (f"   # {c.note}" if c.note else ""))
            print(f"        -> {exc}: {msg[:300]}")


if __name__ == "__main__":
    main()
