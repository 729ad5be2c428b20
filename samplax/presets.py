"""Presets: the samplax plans that reproduce diffusers schedulers and ComfyUI samplers.

"I use diffusers' ``DPMSolverMultistepScheduler(use_karras_sigmas=True)`` / ComfyUI's
``dpmpp_2m`` + ``karras`` with 20 steps: which samplax plan gives the same samples?"::

    p = samplax.presets.diffusers_preset("DPMSolverMultistepScheduler", 20,
                                         beta_schedule="scaled_linear", beta_start=0.00085,
                                         beta_end=0.012, use_karras_sigmas=True)
    p = samplax.presets.comfyui_preset("dpmpp_2m", "karras", 20)
    denoiser = samplax.models.adapters.from_prediction(unet, p.schedule, p.prediction_type,
                                                       time_input=p.time_input)
    x0 = samplax.sample(denoiser, p.plan, p.init_noise_sigma * noise)   # * p.output_scale

Both tools run a solver on the *exact* noise levels of their step schedule but may hand
the network another time: ComfyUI calls a discrete model at the training label nearest
in ``log sigma`` (``ModelSamplingDiscrete.timestep``: ``argmin |log sigma - log_sigmas|``),
diffusers' multistep schedulers at ``_sigma_to_t(sigma).round()`` (the same label) while
converting ``eps -> x0`` with the unrounded sigma, diffusers' Euler at the fractional
label. A :class:`Preset` keeps the solver's exact times in ``plan.t`` and carries the
tool's network-time rule as ``time_input`` (a callable ``t -> network input`` for the
adapters of :mod:`samplax.models.adapters`), so the adapters convert with the exact
``alpha``, ``sigma`` and the network sees what the tool feeds it.

Conventions (DESIGN.md): ``sigma_tilde = sigma/alpha`` is the tools' "sigma"
(k-diffusion, ``scheduler.sigmas``); samplax's state is the VP ``x_t = alpha x0 +
sigma eps`` (diffusers' multistep/DDIM state; k-diffusion, diffusers' Euler family and
ComfyUI keep ``x/alpha``). ``init_noise_sigma`` is the multiple of the tool's standard
normal noise that starts samplax's state; ``output_scale`` the factor from samplax's
output to the tool's (``1/alpha`` of the final time for the ``x/alpha`` tools; 1 when the
last noise level is 0). The noise tables are recomputed in float64 from the betas;
diffusers and ComfyUI keep them in float32 (relative differences ~1e-7, which can move a
rounded label in rare ties).

Supported names (``PRESETS``; :func:`preset_table` renders this table):

| tool | name and options | samplax plan |
|---|---|---|
| diffusers | `DPMSolverMultistepScheduler`: `algorithm_type` dpmsolver++ / dpmsolver, `solver_order` 1-3, `solver_type` midpoint / heun, `lower_order_final`, `euler_at_final`, `use_karras_sigmas` / `use_exponential_sigmas` / `use_lu_lambdas`, `timestep_spacing`, `steps_offset`, `final_sigmas_type`, `lambda_min_clipped`, `rescale_betas_zero_snr` | `dpm_solver_pp` (dpmsolver++) or `dpm_solver` (dpmsolver), multistep, `third_order="published"`, per-step `orders` as diffusers (`lower_order_final` below 15 steps, first order into sigma = 0) |
| diffusers | `UniPCMultistepScheduler`: `solver_order`, `solver_type` bh1 / bh2, `predict_x0`, `disable_corrector`, `lower_order_final`, `use_karras_sigmas` / `use_exponential_sigmas`, `sigma_min` / `sigma_max`, `timestep_spacing`, `steps_offset`, `final_sigmas_type`, `rescale_betas_zero_snr` | `solvers.unipc.build_unipc` (UniPC with UniC on every step but the last, orders `min(p, i + 1, n - i)`) |
| diffusers | `DEISMultistepScheduler`: `solver_order` 1-3, `lower_order_final`, `use_karras_sigmas` / `use_exponential_sigmas`, `timestep_spacing`, `steps_offset` | `dpm_solver(method="multistep", solver_type="heun", third_order="exact")`: diffusers' log-rho DEIS integrates the Lagrange polynomial of `eps` in `lam` exactly, which is this noise-form multistep DPM-Solver |
| diffusers | `DDIMScheduler`: `timestep_spacing`, `steps_offset`, `set_alpha_to_one`, `clip_sample=False`, `rescale_betas_zero_snr` (eta = 0) | DDIM steps `tau -> tau - N // n` built with `PlanBuilder` (diffusers' target label may differ from the next evaluated one) |
| diffusers | `EulerDiscreteScheduler`: `use_karras_sigmas` / `use_exponential_sigmas`, `sigma_min` / `sigma_max`, `timestep_spacing`, `steps_offset`, `final_sigmas_type`, `timestep_type`, `rescale_betas_zero_snr` | `euler` (EDM view); network at the fractional label |
| diffusers | `EulerAncestralDiscreteScheduler`: `timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr` | `euler_ancestral(eta=1)` |
| diffusers | `HeunDiscreteScheduler`: `use_karras_sigmas` / `use_exponential_sigmas`, `timestep_spacing`, `steps_offset`, `beta_schedule` exp | `heun(final_euler=True)` |
| diffusers | `FlowMatchEulerDiscreteScheduler`: `shift`, `use_dynamic_shifting` + `mu`, `time_shift_type`, `shift_terminal`, `use_karras_sigmas` / `use_exponential_sigmas` | Euler (= DDIM) on `RectifiedFlow` at `t = sigma`, from `t = 1`; network at `N t` |
| ComfyUI | samplers `euler`, `ddim` | `euler` (ComfyUI's `ddim` runs its `euler`) |
| ComfyUI | sampler `euler_ancestral` | `euler_ancestral(eta=1)` |
| ComfyUI | sampler `heun` | `heun` (Euler into sigma = 0) |
| ComfyUI | sampler `dpm_2` | k-diffusion `sample_dpm_2` (midpoint in log sigma, EDM view) built with `PlanBuilder` |
| ComfyUI | sampler `dpmpp_2m` | `dpm_solver_pp(order=2)`, orders `1, 2, .., 2, 1` |
| ComfyUI | samplers `uni_pc`, `uni_pc_bh2` | `build_unipc(order=min(3, n - 1))`, bh1 / bh2, last sigma 0 replaced by 0.001 as ComfyUI does |
| ComfyUI | schedulers `normal`, `karras`, `exponential`, `sgm_uniform`, `simple`, `ddim_uniform`, `beta`, `linear_quadratic`, `kl_optimal` | times of `comfy/samplers.py`'s sigmas on the model's `DiscreteVP` (`ModelSamplingDiscrete`); network at the nearest label |

Not expressible exactly (these raise ``ValueError``): ComfyUI's ``deis`` (a 10,000-point
Riemann sum in the time of a fitted VP-linear SDE), ``ipndm`` (its last step jumps to the
denoised sample), ``dpmpp_2s_ancestral`` and the SDE samplers (no exact samplax
equivalent); ComfyUI flow models; diffusers' thresholding / clipping, learned variances,
flow sigmas in the multistep schedulers, beta sigmas, stochastic flow sampling, and the
combinations in which diffusers itself returns NaN (UniPC ``bh1`` or ``predict_x0=False``
into sigma = 0, a second-order Heun or third-order DPM-Solver step of zero length).
"""  # noqa: E501 (markdown table rows)

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from samplax.schedules.discrete import DiscreteVP
from samplax.schedules.flow import RectifiedFlow
from samplax.solvers._multistep import step_orders
from samplax.solvers.ancestral import euler_ancestral
from samplax.solvers.dpm_solver import dpm_solver
from samplax.solvers.dpm_solver_pp import dpm_solver_pp
from samplax.solvers.edm import euler, heun
from samplax.solvers.plan import Plan, PlanBuilder
from samplax.solvers.unipc import build_unipc

__all__ = ["PRESETS", "NetworkTime", "Preset", "comfyui_preset", "diffusers_preset",
           "preset_table"]

Array = Any


class Preset(NamedTuple):
    """A tool's sampler as a samplax plan.

    Attributes:
        schedule: the model's noise schedule (``DiscreteVP`` or ``RectifiedFlow``).
        plan: the solver on the tool's exact noise levels; ``plan.t`` are samplax times.
        timesteps: samplax times of the tool's step grid (``n + 1``, the final included).
        sigmas: ``sigma_tilde = sigma/alpha`` at ``timesteps`` (the tool's k-diffusion-style
            sigmas, final included; flow: the flow sigma ``t``).
        model_labels: what the tool hands the network at each evaluation (``plan.nfe``).
        time_input: callable ``t -> network input`` for the adapters (``time_input=``).
        init_noise_sigma: ``x_T = init_noise_sigma * noise`` in samplax's state, for the
            standard normal ``noise`` the tool draws.
        output_scale: the tool's result is ``output_scale * sample(...)``.
        prediction_type: the adapter to use (``from_prediction``): diffusers'
            ``prediction_type``, ``"epsilon"`` for ComfyUI, ``"flow"`` for flow matching.
        describe: what was reproduced, from which source, and any caveat.
    """

    schedule: Any
    plan: Plan
    timesteps: Array
    sigmas: np.ndarray
    model_labels: np.ndarray
    time_input: Callable
    init_noise_sigma: float
    output_scale: float
    prediction_type: str
    describe: str


# --------------------------------------------------------------------------------------
# Network time
# --------------------------------------------------------------------------------------


class NetworkTime:
    """The network input a tool derives from the solver's noise level: ``t -> t_in``.

    Kinds (``sigma = sigma_tilde(t)`` of ``schedule``, ``ls`` the training
    ``log sigma_tilde`` table):

    - ``"nearest"``: ``argmin_l |log sigma - ls[l]|`` (ComfyUI
      ``ModelSamplingDiscrete.timestep``; diffusers' ``_sigma_to_t(sigma).round()``);
    - ``"floor"``: ``int64(_sigma_to_t(sigma))`` (diffusers' unrounded labels cast to
      ``int64``: exponential sigmas, karras / Lu with ``squaredcos_cap_v2``);
    - ``"log_interp"``: ``_sigma_to_t(sigma)``, linear in ``log sigma`` between labels
      (diffusers' Euler / Heun with karras or exponential sigmas);
    - ``"sigma_interp"``: the label whose ``np.interp(label, arange(N), sigmas) = sigma``
      (diffusers' Euler ``interpolation_type="linear"``);
    - ``"knot"``: ``round(N t - 1)``, the label of a time on the training grid (DDIM);
    - ``"scaled"``: ``scale * t`` (flow matching, ``N t``);
    - ``"quarter_log_sigma"``: ``log(sigma)/4`` (diffusers' Euler ``timestep_type=
      "continuous"`` with v-prediction).
    """

    def __init__(self, kind: str, schedule=None, sigmas=None, scale: float = 1.0):
        self.kind = kind
        self.schedule = schedule
        self.scale = float(scale)
        if sigmas is not None:
            sig = np.asarray(sigmas, np.float64)
            self._sig = jnp.asarray(sig)
            self._log_sig = jnp.asarray(np.log(sig))
            self._labels = jnp.arange(sig.shape[0], dtype=jnp.result_type(float))

    def __repr__(self) -> str:
        return f"NetworkTime({self.kind!r})"

    def _log_sigma(self, t):
        return -self.schedule.lam(jnp.asarray(t))

    def __call__(self, t):
        k = self.kind
        if k == "scaled":
            return jnp.asarray(t) * self.scale
        if k == "knot":
            return jnp.round(self.schedule.label(jnp.asarray(t)))
        ls = self._log_sigma(t)
        if k == "quarter_log_sigma":
            return 0.25 * ls
        if k == "nearest":
            d = jnp.abs(ls[..., None] - self._log_sig)
            return jnp.argmin(d, axis=-1).astype(self._labels.dtype)
        if k == "sigma_interp":
            return jnp.interp(jnp.exp(ls), self._sig, self._labels)
        u = jnp.interp(ls, self._log_sig, self._labels)
        if k == "log_interp":
            return u
        if k == "floor":
            return jnp.floor(u + 1e-7)
        raise ValueError(f"unknown NetworkTime kind {k!r}")


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _train_sigmas(schedule: DiscreteVP) -> np.ndarray:
    """``sigma_tilde`` of the training levels, ``sqrt((1 - abar)/abar)`` (increasing)."""
    ac = np.exp(2.0 * np.asarray(schedule.log_alphas, np.float64))
    with np.errstate(divide="ignore"):  # inf at zero terminal SNR
        return np.sqrt((1.0 - ac) / ac)


def _karras(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion ``get_sigmas_karras`` / diffusers ``_convert_to_karras`` (no zero)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _exponential(n, sigma_min, sigma_max):
    """diffusers ``_convert_to_exponential`` / k-diffusion ``get_sigmas_exponential``."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _sigma_to_t(sigma, log_sigmas):
    """diffusers ``_sigma_to_t`` (``scheduling_dpmsolver_multistep.py`` and others)."""
    sigma = np.atleast_1d(np.asarray(sigma, np.float64))
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low + w * high


def _times(schedule, sigmas, knots=None) -> np.ndarray:
    """samplax times with ``sigma_tilde = sigmas``; ``knots[i]`` (an integer label, or
    NaN) puts a training level exactly at ``t = (l + 1)/N``; ``sigma = 0`` is ``t_lo``."""
    sig = np.asarray(sigmas, np.float64)
    out = np.empty_like(sig)
    pos = sig > 0
    out[~pos] = schedule.t_lo
    if pos.any():
        lam = jnp.asarray(-np.log(sig[pos]))
        out[pos] = np.asarray(schedule.t_of_lam(lam), np.float64)
    if knots is not None:
        kn = np.asarray(knots, np.float64)
        hit = ~np.isnan(kn)
        out[hit] = (kn[hit] + 1.0) / schedule.n
    return np.minimum(out, schedule.t_hi)


def _check_decreasing(tool: str, sigmas) -> None:
    s = np.asarray(sigmas)
    if not np.all(np.diff(s) < 0):
        i = int(np.argmax(np.diff(s) >= 0))
        raise ValueError(f"{tool}: the noise levels are not strictly decreasing "
                         f"(sigma[{i}]={s[i]:.6g}, sigma[{i + 1}]={s[i + 1]:.6g}): too many "
                         "steps for the training levels, or a repeated level")


def _is_dup(a, b) -> bool:
    """Equal noise levels up to the float32 rounding of the tools (a no-op step)."""
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _check_steps(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"the number of steps must be a positive int, got {n!r}; accepted: "
                         "1, 2, ...")
    return int(n)


class _Options:
    """A tool's options: unknown names and unsupported values raise ``ValueError``."""

    def __init__(self, tool: str, defaults: dict, given: dict):
        self.tool = tool
        cls = given.get("_class_name")
        if cls is not None and cls != tool:
            raise ValueError(f"config _class_name={cls!r} does not match scheduler {tool!r}; "
                             f"accepted: {tool!r} (or no _class_name)")
        # keys starting with "_" are diffusers' config metadata (_class_name, _diffusers_version)
        given = {k: v for k, v in given.items() if not k.startswith("_")}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"{tool}: unsupported option(s) {unknown}; accepted options: "
                             f"{sorted(defaults)}")
        self.v = {**defaults, **given}

    def __getitem__(self, key):
        return self.v[key]

    def choice(self, key, allowed):
        val = self.v[key]
        if val not in allowed:
            raise ValueError(f"{self.tool}: {key}={val!r} is not supported; accepted values: "
                             f"{list(allowed)}")
        return val

    def flag(self, key):
        return bool(self.choice(key, (True, False)))

    def only(self, key, value, why=""):
        if self.v[key] is not value and self.v[key] != value:
            raise ValueError(f"{self.tool}: {key}={self.v[key]!r} is not supported; accepted "
                             f"values: [{value!r}]{' (' + why + ')' if why else ''}")


def _diffusers_schedule(o: _Options) -> DiscreteVP:
    """diffusers' ``betas`` (``trained_betas`` or ``beta_schedule``) as a ``DiscreteVP``."""
    n = o["num_train_timesteps"]
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"{o.tool}: num_train_timesteps must be an int >= 2, got {n!r}")
    if o["trained_betas"] is not None:
        return DiscreteVP(np.asarray(o["trained_betas"], np.float64))
    allowed = ("linear", "scaled_linear", "squaredcos_cap_v2")
    if o.tool == "HeunDiscreteScheduler":
        allowed += ("exp",)
    kind = o.choice("beta_schedule", allowed)
    b0, b1 = float(o["beta_start"]), float(o["beta_end"])
    if kind == "linear":
        return DiscreteVP.linear(n, b0, b1)
    if kind == "scaled_linear":
        return DiscreteVP.scaled_linear(n, b0, b1)
    if kind == "squaredcos_cap_v2":
        return DiscreteVP.squaredcos_cap_v2(n)
    # betas_for_alpha_bar(alpha_transform_type="exp"): alpha_bar(u) = exp(-12 u)
    u = np.arange(n + 1) / n
    abar = np.exp(-12.0 * u)
    return DiscreteVP(np.minimum(1.0 - abar[1:] / abar[:-1], 0.999))


def _zero_snr(o: _Options, schedule: DiscreteVP, terminal: float) -> DiscreteVP:
    if "rescale_betas_zero_snr" in o.v and o.flag("rescale_betas_zero_snr"):
        return schedule.zero_terminal_snr(terminal)
    return schedule


_SCHEDULE_OPTIONS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                         beta_schedule="linear", trained_betas=None)
_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _preset(schedule, plan, timesteps, sigmas, labels, time_input, init, scale, pred, text):
    return Preset(schedule, plan, jnp.asarray(np.asarray(timesteps, np.float64)),
                  np.asarray(sigmas, np.float64), np.asarray(labels, np.float64), time_input,
                  float(init), float(scale), pred, text)


def _fmt(o: _Options, keys) -> str:
    return ", ".join(f"{k}={o[k]!r}" for k in keys)


# --------------------------------------------------------------------------------------
# Plans not covered by a registered solver
# --------------------------------------------------------------------------------------


def _ddim_plan(schedule, eval_t, target_t) -> Plan:
    """DDIM (eta = 0) steps ``s_i -> p_i``, each evaluated at ``s_i`` from the anchor.

    ``x_p = alpha_p x0_hat + sigma_p eps_hat = (sigma_p/sigma_s) x + (alpha_p -
    (sigma_p/sigma_s) alpha_s) x0_hat``. Unlike :func:`samplax.ddim` the target of a step
    need not be the next evaluation time (diffusers' DDIM), and ``s_0`` may have
    ``alpha = 0`` (zero terminal SNR; flow matching at ``t = 1``), where the data-form
    step is still finite.
    """
    b = PlanBuilder(schedule)
    for s, p in zip(eval_t, target_t, strict=True):
        s, p = jnp.asarray(s), jnp.asarray(p)
        out = b.evaluate(b.x, s)
        r = schedule.sigma(p) / schedule.sigma(s)
        b.set_x(b.x * r + out.d * (schedule.alpha(p) - r * schedule.alpha(s)))
    return b.build()


def _dpm_2_plan(schedule, ts) -> Plan:
    """k-diffusion ``sample_dpm_2`` (no churn) in the EDM view, as a plan.

    Step ``s -> t`` on ``x_tilde = x/alpha`` with ``d = (x_tilde - D)/sigma_s``:
    ``sigma_mid = exp((log sigma_s + log sigma_t)/2)``, ``x_2 = x_tilde + d (sigma_mid -
    sigma_s)``, ``d_2 = (x_2 - D(x_2, sigma_mid))/sigma_mid``, ``x_tilde_t = x_tilde +
    d_2 (sigma_t - sigma_s)``; an Euler step into ``sigma_t = 0``.
    """
    b = PlanBuilder(schedule)
    for i in range(len(ts) - 1):
        s, t = jnp.asarray(ts[i]), jnp.asarray(ts[i + 1])
        a_s, a_t = schedule.alpha(s), schedule.alpha(t)
        sg_s = jnp.exp(-schedule.lam(s))
        xt = b.x / a_s
        out = b.evaluate(b.x, s)
        d = (xt - out.d) / sg_s
        if float(schedule.sigma(t)) == 0.0:
            b.set_x((xt - d * sg_s) * a_t)
            continue
        sg_t = jnp.exp(-schedule.lam(t))
        log_mid = 0.5 * (jnp.log(sg_s) + jnp.log(sg_t))
        t_mid = schedule.t_of_lam(-log_mid)
        sg_mid = jnp.exp(log_mid)
        x2 = xt + d * (sg_mid - sg_s)
        out2 = b.evaluate(x2 * schedule.alpha(t_mid), t_mid)
        d2 = (x2 - out2.d) / sg_mid
        b.set_x((xt + d2 * (sg_t - sg_s)) * a_t)
    return b.build()


# --------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------

_SOURCE = "huggingface/diffusers src/diffusers/schedulers/"


def _spacing_labels(o: _Options, n: int, N: int, last: int | None = None) -> np.ndarray:
    """``set_timesteps`` of the multistep schedulers: ``n`` integer labels.

    ``linspace``: ``round(linspace(0, last - 1, n + 1))[::-1][:-1]``; ``leading``:
    ``round(arange(n + 1) * (last // (n + 1)))[::-1][:-1] + steps_offset``;
    ``trailing``: ``round(arange(last, 0, -N/n)) - 1`` (``last = N`` but for
    DPM-Solver's ``lambda_min_clipped``).
    """
    last = N if last is None else last
    sp = o.choice("timestep_spacing", ("linspace", "leading", "trailing"))
    if sp == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if sp == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + int(
            o["steps_offset"])
    return np.arange(last, 0, -N / n).round().astype(np.int64) - 1


def _sigma_table(o, which, labels, sig, n, *, round_labels, sigma_min=None, sigma_max=None):
    """The sigmas (no final) and network labels of the multistep schedulers.

    ``which``: ``"none"`` (``np.interp(timesteps, arange(N), sigmas)``: the training sigmas
    at ``labels``), ``"karras"`` (``_convert_to_karras`` on the flipped training sigmas) or
    ``"exponential"`` (``_convert_to_exponential``; also ``use_lu_lambdas``, whose
    ``_convert_to_lu`` with ``rho = 1`` is equal steps in ``log sigma``). Converted sigmas
    get ``_sigma_to_t`` labels, rounded when ``round_labels`` (else cast to ``int64``:
    truncated).
    """
    if which == "none":
        if labels.min() < 0 or labels.max() > sig.shape[0] - 1:
            raise ValueError(f"{o.tool}: labels {labels.min()}..{labels.max()} leave the "
                             f"training range 0..{sig.shape[0] - 1} (steps_offset?)")
        return sig[labels], labels.astype(np.float64), "nearest"
    lo = sig[0] if sigma_min is None else float(sigma_min)
    hi = sig[-1] if sigma_max is None else float(sigma_max)
    if which == "karras":
        s = _karras(n, lo, hi)
    else:
        s = _exponential(n, lo, hi)
    u = _sigma_to_t(s, np.log(sig))
    if round_labels:
        return s, np.round(u), "nearest"
    return s, np.floor(u), "floor"


def _multistep_orders(n, order, lower_order_final, *, final_zero=False, euler_at_final=False):
    """diffusers' DPMSolverMultistep / DEIS ``step`` orders (``lower_order_final`` only
    below 15 steps; first order into sigma = 0 and with ``euler_at_final``)."""
    out = []
    for i in range(n):
        lof = i == n - 1 and (euler_at_final or (lower_order_final and n < 15) or final_zero)
        los = i == n - 2 and lower_order_final and n < 15
        done = min(i, order)
        if order == 1 or done < 1 or lof:
            out.append(1)
        elif order == 2 or done < 2 or los:
            out.append(2)
        else:
            out.append(3)
    return out


def _dpm_multistep(o: _Options, n: int, kind: str) -> Preset:
    """DPMSolverMultistepScheduler / UniPCMultistepScheduler / DEISMultistepScheduler.

    diffusers ``scheduling_dpmsolver_multistep.py``, ``scheduling_unipc_multistep.py``,
    ``scheduling_deis_multistep.py``: ``__init__`` (betas, ``alphas_cumprod``, the
    ``2**-24`` terminal level of ``rescale_betas_zero_snr``), ``set_timesteps`` (spacing,
    karras / exponential / Lu sigmas with ``_sigma_to_t`` labels, ``final_sigmas_type``),
    ``step`` (``lower_order_final`` / ``lower_order_second``; UniPC's ``this_order`` and
    ``use_corrector``), ``convert_model_output`` (``x0`` or ``eps`` from the unrounded
    sigma, as the samplax adapters do at the plan's exact times) and the updates
    (``dpm_solver_first_order_update``, ``multistep_dpm_solver_{second,third}_order_update``,
    ``multistep_uni_p_bh_update``, ``multistep_uni_c_bh_update``,
    ``multistep_deis_{second,third}_order_update``).
    """
    schedule = _zero_snr(o, _diffusers_schedule(o), 2.0**-24)
    pred = o.choice("prediction_type", _PREDICTIONS)
    o.only("thresholding", False, "a nonlinear transform of x0_hat")
    N = schedule.n
    sig = _train_sigmas(schedule)
    order = o.choice("solver_order", (1, 2, 3))
    lof = o.flag("lower_order_final")
    for key in ("use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"):
        o.only(key, False)
    karras, expo = o.flag("use_karras_sigmas"), o.flag("use_exponential_sigmas")
    lu = kind == "dpm" and o.flag("use_lu_lambdas")
    if karras + expo + lu > 1:
        raise ValueError(f"{o.tool}: use at most one of use_karras_sigmas, "
                         "use_exponential_sigmas, use_lu_lambdas")
    which = "karras" if karras else "exponential" if expo else "lu" if lu else "none"
    cosine = o["beta_schedule"] == "squaredcos_cap_v2" and o["trained_betas"] is None

    last = None
    if kind == "dpm":
        o.only("variance_type", None, "learned variances need a model-output slice")
        lmc = float(o["lambda_min_clipped"])
        if lmc != -math.inf:
            ac = np.exp(2.0 * np.asarray(schedule.log_alphas, np.float64))
            lam = 0.5 * np.log(ac) - 0.5 * np.log1p(-ac)  # diffusers' lambda_t
            # clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped)
            last = N - int(np.searchsorted(lam[::-1], lmc, side="left"))
    labels = _spacing_labels(o, n, N, last)
    if kind == "unipc":
        sigmas, net, tkind = _sigma_table(o, which, labels, sig, n, round_labels=which == "karras",
                                          sigma_min=o["sigma_min"], sigma_max=o["sigma_max"])
    elif kind == "deis":
        sigmas, net, tkind = _sigma_table(o, which, labels, sig, n, round_labels=which == "karras")
    else:
        sigmas, net, tkind = _sigma_table(o, "exponential" if lu else which, labels, sig, n,
                                          round_labels=which in ("karras", "lu") and not cosine)

    # final sigma
    if kind == "deis":
        final = "dup" if which != "none" else "sigma_min"
    else:
        final = o.choice("final_sigmas_type", ("zero", "sigma_min"))
        if final == "sigma_min" and which != "none" and kind == "unipc":
            final = "dup"
    last_sigma = {"dup": sigmas[-1], "zero": 0.0, "sigma_min": sig[0]}[final]
    sigmas = np.append(sigmas, last_sigma)
    # integer labels are training levels: put them exactly at t = (l + 1)/N
    knots = None
    if which == "none":
        knots = np.append(net, 0.0 if final == "sigma_min" else np.nan)
    dup = bool(sigmas[-1] > 0 and _is_dup(sigmas[-1], sigmas[-2]))
    notes = []

    if kind == "dpm":
        # diffusers' __init__ maps algorithm_type "deis" to dpmsolver++ and solver_type
        # logrho/bh1/bh2 to midpoint (configs shared between schedulers)
        algo = o.choice("algorithm_type", ("dpmsolver++", "dpmsolver", "deis"))
        algo = "dpmsolver++" if algo == "deis" else algo
        stype = o.choice("solver_type", ("midpoint", "heun", "logrho", "bh1", "bh2"))
        stype = stype if stype in ("midpoint", "heun") else "midpoint"
        if algo == "dpmsolver" and final == "zero":
            raise ValueError(f"{o.tool}: final_sigmas_type='zero' is not supported with "
                             "algorithm_type='dpmsolver' (diffusers raises too); accepted: "
                             "'sigma_min'")
        orders = _multistep_orders(n, order, lof, final_zero=final == "zero",
                                   euler_at_final=o.flag("euler_at_final"))
    elif kind == "deis":
        # diffusers maps algorithm_type dpmsolver/dpmsolver++ and solver_type
        # midpoint/heun/bh1/bh2 to deis/logrho
        o.choice("algorithm_type", ("deis", "dpmsolver", "dpmsolver++"))
        o.choice("solver_type", ("logrho", "midpoint", "heun", "bh1", "bh2"))
        orders = _multistep_orders(n, order, lof)
    else:
        # diffusers maps solver_type midpoint/heun/logrho to bh2
        variant = o.choice("solver_type", ("bh1", "bh2", "midpoint", "heun", "logrho"))
        variant = variant if variant in ("bh1", "bh2") else "bh2"
        predict_x0 = o.flag("predict_x0")
        o.only("solver_p", None, "a second scheduler as predictor")
        o.only("shift_terminal", None, "only with use_flow_sigmas")
        orders = step_orders(n, order, lof)
        if final == "zero" and (variant == "bh1" or not predict_x0 or orders[-1] > 1):
            raise ValueError(
                f"{o.tool}: with final_sigmas_type='zero' diffusers' last UniP step returns NaN "
                f"for solver_type={variant!r}, predict_x0={predict_x0}, lower_order_final={lof} "
                "(B(h) or its weights are infinite at sigma = 0); accepted: solver_type='bh2', "
                "predict_x0=True, lower_order_final=True, or final_sigmas_type='sigma_min'")
        if dup:
            raise ValueError(
                f"{o.tool}: final_sigmas_type='sigma_min' here ends with a zero-length step "
                "(the last sigma repeated) whose only effect is UniC on the step before it; "
                "samplax's UniPC has no corrector on its last step. Accepted: "
                "final_sigmas_type='zero' (or a spacing whose last label is above 0)")
        disabled = o["disable_corrector"]
        if not isinstance(disabled, list | tuple) or not all(
                isinstance(i, int | np.integer) for i in disabled):
            raise ValueError(f"{o.tool}: disable_corrector must be a list of step indices, "
                             f"got {disabled!r}")

    # a repeated last sigma is a zero-length step: a no-op in diffusers (one NFE wasted)
    if dup:
        k = orders[-1]
        if kind == "dpm" and (k == 3 or (k == 2 and stype == "heun")):
            raise ValueError(
                f"{o.tool}: the last step has zero length (repeated final sigma) and order {k} "
                f"with solver_type={stype!r}: diffusers returns NaN there ((e^-h - 1)/h at h = 0). "
                "Accepted: final_sigmas_type='zero', lower_order_final=True with < 15 steps, "
                "solver_type='midpoint' with solver_order <= 2")
        sigmas, orders, net = sigmas[:-1], orders[:-1], net[:-1]
        if knots is not None:
            knots = knots[:-1]
        notes.append(f"diffusers' last step repeats sigma {sigmas[-1]:.6g} (zero length: a no-op "
                     "costing one extra network call), dropped here")
        if len(orders) == 0:
            raise ValueError(f"{o.tool}: one step with a repeated final sigma does nothing")
    _check_decreasing(o.tool, sigmas)
    ts = _times(schedule, sigmas, knots)
    time_input = NetworkTime(tkind, schedule, sig)

    if kind == "dpm":
        build = dpm_solver_pp if algo == "dpmsolver++" else dpm_solver
        extra = {} if algo == "dpmsolver++" else {"method": "multistep"}
        plan = build(schedule, jnp.asarray(ts), orders=orders, solver_type=stype,
                     third_order="published", **extra)
        call = (f"samplax.{build.__name__}(orders={orders}, solver_type={stype!r}, "
                "third_order='published'" + (", method='multistep')" if extra else ")"))
        opts = ("algorithm_type", "solver_order", "solver_type", "lower_order_final",
                "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas",
                "use_lu_lambdas", "timestep_spacing", "steps_offset", "final_sigmas_type")
        src = _SOURCE + "scheduling_dpmsolver_multistep.py (set_timesteps, step)"
    elif kind == "deis":
        plan = dpm_solver(schedule, jnp.asarray(ts), method="multistep", orders=orders,
                          solver_type="heun", third_order="exact")
        call = (f"samplax.dpm_solver(method='multistep', orders={orders}, solver_type='heun', "
                "third_order='exact') (= log-rho DEIS: Lagrange polynomial of eps in lam, "
                "integrated exactly)")
        opts = ("solver_order", "lower_order_final", "use_karras_sigmas",
                "use_exponential_sigmas", "timestep_spacing", "steps_offset")
        src = _SOURCE + "scheduling_deis_multistep.py (set_timesteps, step, ind_fn)"
    else:
        corr = [i not in set(int(j) for j in disabled) for i in range(len(orders) - 1)] + [False]
        plan = build_unipc(schedule, jnp.asarray(ts), orders, variant, predict_x0, corr)
        on = [i for i, c in enumerate(corr) if c]
        call = (f"samplax.solvers.unipc.build_unipc(orders={orders}, variant={variant!r}, "
                f"predict_x0={predict_x0}, corrector on steps {on})")
        opts = ("solver_order", "solver_type", "predict_x0", "lower_order_final",
                "disable_corrector", "use_karras_sigmas", "use_exponential_sigmas",
                "timestep_spacing", "steps_offset", "final_sigmas_type")
        src = _SOURCE + "scheduling_unipc_multistep.py (set_timesteps, step, " \
            "multistep_uni_p_bh_update, multistep_uni_c_bh_update)"
    rule = {"nearest": "the training label nearest in log sigma (diffusers rounds its labels)",
            "floor": "int64(_sigma_to_t(sigma)) (unrounded labels truncated)"}[tkind]
    text = (f"diffusers {o.tool}({_fmt(o, opts)}), {n} steps -> {call} on DiscreteVP(N={N}); "
            f"network time: {rule}; x_T = 1.0 * noise (VP state, init_noise_sigma = 1). "
            f"Source: {src}." + (" " + "; ".join(notes) + "." if notes else ""))
    return _preset(schedule, plan, ts, sigmas, net, time_input, 1.0, 1.0, pred, text)


def _ddim(o: _Options, n: int) -> Preset:
    """DDIMScheduler (eta = 0): ``scheduling_ddim.py`` ``set_timesteps`` and ``step``."""
    schedule = _diffusers_schedule(o)
    if o.flag("rescale_betas_zero_snr"):
        schedule = schedule.zero_terminal_snr()  # diffusers' DDIM keeps alpha_bar[-1] = 0
    pred = o.choice("prediction_type", _PREDICTIONS)
    o.only("clip_sample", False, "clipping x0_hat is not linear; SD configs set it False")
    o.only("thresholding", False, "a nonlinear transform of x0_hat")
    N = schedule.n
    if n > N:
        raise ValueError(f"{o.tool}: num_inference_steps={n} exceeds num_train_timesteps={N}")
    sp = o.choice("timestep_spacing", ("linspace", "leading", "trailing"))
    if sp == "linspace":
        tau = np.linspace(0, N - 1, n).round()[::-1].astype(np.int64)
    elif sp == "leading":
        tau = (np.arange(0, n) * (N // n)).round()[::-1].astype(np.int64) + int(o["steps_offset"])
    else:
        tau = np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1
    if tau.max() > N - 1 or tau.min() < 0 or not np.all(np.diff(tau) < 0):
        raise ValueError(f"{o.tool}: labels {tau.tolist()} leave 0..{N - 1} or repeat")
    prev = tau - N // n
    one = o.flag("set_alpha_to_one")
    final_t = 0.0 if one else 1.0 / N
    target = np.where(prev >= 0, (prev + 1.0) / N, final_t)
    eval_t = (tau + 1.0) / N
    plan = _ddim_plan(schedule, eval_t, target)
    sig = _train_sigmas(schedule)
    sigmas = np.append(sig[tau], 0.0 if one else sig[0])
    ts = np.append(eval_t, final_t)
    mismatch = [i for i in range(n - 1) if prev[i] != tau[i + 1]]
    note = ""
    if mismatch:
        note = (f" diffusers' step i goes to label tau_i - {N // n} but evaluates next at "
                f"tau_(i+1) (differs at steps {mismatch}): the plan reproduces this, so "
                "`timesteps` lists evaluation times and the final time only.")
    text = (f"diffusers DDIMScheduler({_fmt(o, ('timestep_spacing', 'steps_offset', 'set_alpha_to_one', 'rescale_betas_zero_snr'))}), "  # noqa: E501
            f"{n} steps, eta=0 -> DDIM steps tau -> tau - N//n (PlanBuilder) on DiscreteVP(N={N}); "
            "network time: the integer label; x_T = 1.0 * noise. Source: "
            f"{_SOURCE}scheduling_ddim.py (set_timesteps, step: prev_timestep = timestep - "
            f"num_train_timesteps // num_inference_steps).{note}")
    return _preset(schedule, plan, ts, sigmas, tau, NetworkTime("knot", schedule), 1.0, 1.0,
                   pred, text)


def _euler_family(o: _Options, n: int, kind: str) -> Preset:
    """EulerDiscrete / EulerAncestralDiscrete / HeunDiscrete (``x/alpha`` state).

    diffusers ``scheduling_euler_discrete.py``, ``scheduling_euler_ancestral_discrete.py``,
    ``scheduling_heun_discrete.py``: ``set_timesteps`` (float labels, not rounded:
    ``linspace(0, N - 1, n)``; ``sigmas = np.interp(timesteps, arange(N), sigmas)``, linear
    in the label; karras / exponential sigmas with ``_sigma_to_t`` labels; Heun's doubled
    tables), ``init_noise_sigma`` (``max sigma`` for linspace/trailing, else
    ``sqrt(max sigma^2 + 1)``), ``scale_model_input`` (``x/sqrt(sigma^2 + 1)``, the VP
    state) and ``step`` (Euler / ancestral ``sigma_up``, ``sigma_down`` / Heun).
    """
    schedule = _zero_snr(o, _diffusers_schedule(o), 2.0**-24)
    N = schedule.n
    sig = _train_sigmas(schedule)
    allowed = _PREDICTIONS if kind != "ancestral" else ("epsilon", "v_prediction")
    pred = o.choice("prediction_type", allowed)
    if kind == "heun":
        o.only("clip_sample", False, "clipping x0_hat is not linear")
    sp = o.choice("timestep_spacing", ("linspace", "leading", "trailing"))
    if sp == "linspace":
        labels = np.linspace(0, N - 1, n)[::-1].copy()
    elif sp == "leading":
        labels = (np.arange(0, n) * (N // n)).round()[::-1] + float(o["steps_offset"])
    else:
        labels = np.arange(N, 0, -N / n).round() - 1.0
    if labels.min() < 0 or labels.max() > N - 1:
        raise ValueError(f"{o.tool}: labels {labels.min():g}..{labels.max():g} leave 0..{N - 1}")
    sigmas = np.interp(labels, np.arange(N), sig)
    tkind = "sigma_interp"
    which = "none"
    if kind != "ancestral":
        for key in ("use_beta_sigmas",):
            o.only(key, False)
        karras, expo = o.flag("use_karras_sigmas"), o.flag("use_exponential_sigmas")
        if karras and expo:
            raise ValueError(f"{o.tool}: use at most one of use_karras_sigmas, "
                             "use_exponential_sigmas")
        which = "karras" if karras else "exponential" if expo else "none"
        if which != "none":
            lo = sigmas[-1] if o.v.get("sigma_min") is None else float(o["sigma_min"])
            hi = sigmas[0] if o.v.get("sigma_max") is None else float(o["sigma_max"])
            sigmas = _karras(n, lo, hi) if karras else _exponential(n, lo, hi)
            labels = _sigma_to_t(sigmas, np.log(sig))
            tkind = "log_interp"
    if kind == "euler":
        o.choice("interpolation_type", ("linear",))
        final = o.choice("final_sigmas_type", ("zero", "sigma_min"))
        if o.choice("timestep_type", ("discrete", "continuous")) == "continuous" and \
                pred == "v_prediction":
            tkind = "quarter_log_sigma"
    else:
        final = "zero"
    sigmas = np.append(sigmas, 0.0 if final == "zero" else sig[0])
    notes = []
    if final == "sigma_min" and _is_dup(sigmas[-1], sigmas[-2]):
        sigmas, labels = sigmas[:-1], labels[:-1]
        notes.append(f"diffusers' last step repeats sigma {sigmas[-1]:.6g} (dt = 0, one extra "
                     "network call), dropped here")
    _check_decreasing(o.tool, sigmas)
    knots = None
    if which == "none":  # integer labels are training levels, at t = (l + 1)/N exactly
        knots = np.append(np.where(labels == np.round(labels), labels, np.nan),
                          0.0 if final == "sigma_min" else np.nan)[: len(sigmas)]
    ts = _times(schedule, sigmas, knots)
    time_input = NetworkTime(tkind, schedule, sig)
    if tkind == "quarter_log_sigma":
        labels = 0.25 * np.log(sigmas[:-1])
    tsj = jnp.asarray(ts)
    if kind == "euler":
        plan, call, src = euler(schedule, tsj), "samplax.euler", "scheduling_euler_discrete.py"
        model_labels = labels
    elif kind == "ancestral":
        plan = euler_ancestral(schedule, tsj, eta=1.0)
        call, src = "samplax.euler_ancestral(eta=1)", "scheduling_euler_ancestral_discrete.py"
        model_labels = labels
    else:
        plan = heun(schedule, tsj, final_euler=True)
        call, src = "samplax.heun(final_euler=True)", "scheduling_heun_discrete.py"
        # diffusers' timesteps [t0, t1, t1, .., t_{n-1}, t_{n-1}]: Heun's corrector at the
        # next level, Euler into sigma = 0
        model_labels = np.concatenate([labels[:1], np.repeat(labels[1:], 2)])
    # init_noise_sigma: max sigma (linspace/trailing) or sqrt(max^2 + 1), in x/alpha units
    smax = float(np.max(sigmas))
    init_tool = smax if sp in ("linspace", "trailing") else math.sqrt(smax**2 + 1.0)
    a0 = 1.0 / math.sqrt(1.0 + sigmas[0] ** 2)
    init = init_tool * a0
    out_scale = 1.0 if sigmas[-1] == 0 else math.sqrt(1.0 + sigmas[-1] ** 2)
    rule = {"sigma_interp": "the fractional label with np.interp(label, arange(N), sigmas) = "
                            "sigma (diffusers does not round)",
            "log_interp": "_sigma_to_t(sigma), fractional (not rounded)",
            "quarter_log_sigma": "0.25 log(sigma)"}[tkind]
    opts = ("timestep_spacing", "steps_offset") + (
        ("use_karras_sigmas", "use_exponential_sigmas") if kind != "ancestral" else ())
    if kind == "euler":
        opts += ("final_sigmas_type",)
    text = (f"diffusers {o.tool}({_fmt(o, opts)}), {n} steps -> {call} on DiscreteVP(N={N}); "
            f"network time: {rule}; x_T = {init:.8g} * noise (diffusers scales noise by "
            f"init_noise_sigma = {init_tool:.8g} in x/alpha units). Source: {_SOURCE}{src} "
            "(set_timesteps, init_noise_sigma, step)."
            + (f" The tool returns x/alpha: output_scale = {out_scale:.8g}." if out_scale != 1
               else "") + (" " + "; ".join(notes) + "." if notes else ""))
    return _preset(schedule, plan, ts, sigmas, model_labels, time_input, init, out_scale, pred,
                   text)


def _flow_match(o: _Options, n: int, mu) -> Preset:
    """FlowMatchEulerDiscreteScheduler: ``scheduling_flow_match_euler_discrete.py``.

    ``__init__``: ``sigmas = linspace(1, N, N)[::-1]/N`` shifted (unless dynamic), so
    ``sigma_max = shift(1) = 1``, ``sigma_min = shift(1/N)``; ``set_timesteps``:
    ``s = linspace(sigma_max, sigma_min, n)`` then ``sigma = shift s/(1 + (shift - 1) s)``
    (or ``time_shift(mu)``), optional ``shift_terminal`` stretch and karras/exponential,
    then ``0``; timesteps ``N sigma``. Euler: ``x += (sigma_next - sigma) u``.
    """
    N = o["num_train_timesteps"]
    for key in ("use_beta_sigmas", "invert_sigmas", "stochastic_sampling"):
        o.only(key, False)
    dyn = o.flag("use_dynamic_shifting")
    tst = o.choice("time_shift_type", ("exponential", "linear"))
    shift = float(o["shift"])

    def shift_fn(s, k):
        return k * s / (1 + (k - 1) * s)

    if dyn:
        if mu is None:
            raise ValueError(f"{o.tool}: use_dynamic_shifting=True needs mu (set_timesteps' "
                             "argument)")
        k = math.exp(mu) if tst == "exponential" else float(mu)
        s_min = 1.0 / N
    else:
        if mu is not None:
            raise ValueError(f"{o.tool}: mu is only used with use_dynamic_shifting=True")
        k = shift
        s_min = shift_fn(1.0 / N, shift)
    sigmas = shift_fn(np.linspace(1.0, s_min, n), k)
    if o["shift_terminal"]:
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - float(o["shift_terminal"])))
    karras, expo = o.flag("use_karras_sigmas"), o.flag("use_exponential_sigmas")
    if karras and expo:
        raise ValueError(f"{o.tool}: use at most one of use_karras_sigmas, use_exponential_sigmas")
    if karras:
        sigmas = _karras(n, sigmas[-1], sigmas[0])
    elif expo:
        sigmas = _exponential(n, sigmas[-1], sigmas[0])
    sigmas = np.append(sigmas, 0.0)
    _check_decreasing(o.tool, sigmas)
    if sigmas[0] > 1.0 + 1e-12:
        raise ValueError(f"{o.tool}: the first sigma {sigmas[0]} exceeds 1")
    sigmas[0] = min(sigmas[0], 1.0)
    schedule = RectifiedFlow()
    plan = _ddim_plan(schedule, sigmas[:-1], sigmas[1:])
    text = (f"diffusers FlowMatchEulerDiscreteScheduler(shift={shift}, use_dynamic_shifting={dyn}"
            f"{f', mu={mu}' if dyn else ''}, shift_terminal={o['shift_terminal']}, "
            f"use_karras_sigmas={karras}, use_exponential_sigmas={expo}), {n} steps -> Euler "
            "(= DDIM, PlanBuilder) on RectifiedFlow at t = sigma, starting at t = sigma_0 (alpha = "
            f"0 when sigma_0 = 1); network time: {N} t; x_T = 1.0 * noise; use from_flow. Source: "
            f"{_SOURCE}scheduling_flow_match_euler_discrete.py (__init__, set_timesteps, step).")
    return _preset(schedule, plan, sigmas, sigmas, sigmas[:-1] * N,
                   NetworkTime("scaled", scale=N), 1.0, 1.0, "flow", text)


_MULTISTEP_COMMON = dict(
    **_SCHEDULE_OPTIONS, solver_order=2, prediction_type="epsilon", thresholding=False,
    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, lower_order_final=True,
    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
    use_flow_sigmas=False, flow_shift=1.0, timestep_spacing="linspace", steps_offset=0,
    use_dynamic_shifting=False, time_shift_type="exponential")

_DIFFUSERS_DEFAULTS = {
    "DPMSolverMultistepScheduler": dict(
        **_MULTISTEP_COMMON, algorithm_type="dpmsolver++", solver_type="midpoint",
        euler_at_final=False, use_lu_lambdas=False, final_sigmas_type="zero",
        lambda_min_clipped=-math.inf, variance_type=None, rescale_betas_zero_snr=False),
    "UniPCMultistepScheduler": dict(
        **_MULTISTEP_COMMON, predict_x0=True, solver_type="bh2", disable_corrector=[],
        solver_p=None, final_sigmas_type="zero", rescale_betas_zero_snr=False,
        sigma_min=None, sigma_max=None, shift_terminal=None),
    "DEISMultistepScheduler": dict(**_MULTISTEP_COMMON, algorithm_type="deis",
                                   solver_type="logrho"),
    "DDIMScheduler": dict(
        **_SCHEDULE_OPTIONS, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
        prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
        rescale_betas_zero_snr=False),
    "EulerDiscreteScheduler": dict(
        **_SCHEDULE_OPTIONS, prediction_type="epsilon", interpolation_type="linear",
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        sigma_min=None, sigma_max=None, timestep_spacing="linspace", timestep_type="discrete",
        steps_offset=0, rescale_betas_zero_snr=False, final_sigmas_type="zero"),
    "EulerAncestralDiscreteScheduler": dict(
        **_SCHEDULE_OPTIONS, prediction_type="epsilon", timestep_spacing="linspace",
        steps_offset=0, rescale_betas_zero_snr=False),
    "HeunDiscreteScheduler": dict(
        **{**_SCHEDULE_OPTIONS, "beta_start": 0.00085, "beta_end": 0.012},
        prediction_type="epsilon", use_karras_sigmas=False, use_exponential_sigmas=False,
        use_beta_sigmas=False, clip_sample=False, clip_sample_range=1.0,
        timestep_spacing="linspace", steps_offset=0),
    "FlowMatchEulerDiscreteScheduler": dict(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False,
        shift_terminal=None, use_karras_sigmas=False, use_exponential_sigmas=False,
        use_beta_sigmas=False, time_shift_type="exponential", stochastic_sampling=False),
}


# scheduler -> (builder, variant) for the schedulers that share a builder
_DIFFUSERS_BUILDERS = {
    "DPMSolverMultistepScheduler": (_dpm_multistep, "dpm"),
    "UniPCMultistepScheduler": (_dpm_multistep, "unipc"),
    "DEISMultistepScheduler": (_dpm_multistep, "deis"),
    "EulerDiscreteScheduler": (_euler_family, "euler"),
    "EulerAncestralDiscreteScheduler": (_euler_family, "ancestral"),
    "HeunDiscreteScheduler": (_euler_family, "heun"),
}


def diffusers_preset(scheduler: str, num_inference_steps: int, *, mu: float | None = None,
                     **config) -> Preset:
    """The samplax plan that reproduces a diffusers scheduler's sampling loop.

    Reproduces ``set_timesteps(num_inference_steps)`` and the ``step`` loop of
    ``huggingface/diffusers src/diffusers/schedulers/scheduling_<name>.py`` for a
    noise-prediction (or v / sample) network: the same noise levels, the same
    per-step solver orders and updates, the same network input (``time_input``) and
    initial noise scale. The noise schedule comes from the config as in diffusers'
    ``__init__`` (``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule`` in ``linear``/``scaled_linear``/``squaredcos_cap_v2``, or
    ``trained_betas``) as a :class:`~samplax.schedules.DiscreteVP`, except for
    ``FlowMatchEulerDiscreteScheduler`` (:class:`~samplax.schedules.RectifiedFlow`).

    Args:
        scheduler: a diffusers class name, see ``PRESETS["diffusers"]``.
        num_inference_steps: as passed to ``set_timesteps``.
        mu: ``set_timesteps(mu=...)`` of ``FlowMatchEulerDiscreteScheduler`` with
            ``use_dynamic_shifting=True``.
        **config: the scheduler's config (e.g. a model's ``scheduler_config.json``); the
            diffusers defaults apply to missing keys, keys starting with ``_`` are
            metadata. Options that would change the samples but have no exact samplax
            equivalent raise.

    Returns:
        A :class:`Preset`.

    Raises:
        ValueError: naming the unknown scheduler or option and the accepted ones.
    """
    if scheduler not in _DIFFUSERS_DEFAULTS:
        raise ValueError(f"unknown diffusers scheduler {scheduler!r}; accepted: "
                         f"{sorted(_DIFFUSERS_DEFAULTS)}")
    n = _check_steps(num_inference_steps)
    o = _Options(scheduler, _DIFFUSERS_DEFAULTS[scheduler], config)
    if scheduler != "FlowMatchEulerDiscreteScheduler" and mu is not None:
        raise ValueError(f"{scheduler}: mu is only accepted by FlowMatchEulerDiscreteScheduler")
    if scheduler == "FlowMatchEulerDiscreteScheduler":
        return _flow_match(o, n, mu)
    if scheduler == "DDIMScheduler":
        return _ddim(o, n)
    build, kind = _DIFFUSERS_BUILDERS[scheduler]
    return build(o, n, kind)


# --------------------------------------------------------------------------------------
# ComfyUI
# --------------------------------------------------------------------------------------

_COMFY = "comfyanonymous/ComfyUI comfy/samplers.py"


def _comfy_sigmas(name: str, sig: np.ndarray, steps: int) -> np.ndarray:
    """ComfyUI ``calculate_sigmas(model_sampling, name, steps)`` for ``ModelSamplingDiscrete``
    with training sigmas ``sig`` (increasing), in float64."""
    N = sig.shape[0]
    log_sig = np.log(sig)
    s_min, s_max = float(sig[0]), float(sig[-1])

    def sigma_of(ts):  # ModelSamplingDiscrete.sigma: log-linear in the label
        t = np.clip(np.asarray(ts, np.float64), 0, N - 1)
        lo, hi = np.floor(t).astype(int), np.ceil(t).astype(int)
        w = t - lo
        return np.exp((1 - w) * log_sig[lo] + w * log_sig[hi])

    if name in ("normal", "sgm_uniform"):  # normal_scheduler(sgm=...)
        start, end = N - 1, 0  # timestep(sigma_max), timestep(sigma_min)
        append_zero = True
        if name == "sgm_uniform":
            ts = np.linspace(start, end, steps + 1)[:-1]
        else:
            if math.isclose(float(sigma_of(end)), 0, abs_tol=1e-5):
                steps += 1
                append_zero = False
            ts = np.linspace(start, end, steps)
        out = list(sigma_of(ts))
        return np.array(out + [0.0] if append_zero else out)
    if name == "simple":
        ss = N / steps
        return np.array([sig[-(1 + int(x * ss))] for x in range(steps)] + [0.0])
    if name == "ddim_uniform":
        x = 1
        if math.isclose(float(sig[x]), 0, abs_tol=1e-5):
            steps += 1
            sigs = []
        else:
            sigs = [0.0]
        ss = max(N // steps, 1)
        while x < N:
            sigs.append(float(sig[x]))
            x += ss
        return np.array(sigs[::-1])
    if name == "karras":
        return np.append(_karras(steps, s_min, s_max), 0.0)
    if name == "exponential":
        return np.append(_exponential(steps, s_min, s_max), 0.0)
    if name == "kl_optimal":
        if steps < 2:
            raise ValueError("ComfyUI kl_optimal needs steps >= 2 (it divides by steps - 1)")
        adj = np.arange(steps) / (steps - 1)
        return np.append(np.tan(adj * math.atan(s_min) + (1 - adj) * math.atan(s_max)), 0.0)
    if name == "beta":  # beta_scheduler(alpha=0.6, beta=0.6)
        import scipy.stats

        ts = 1 - np.linspace(0, 1, steps, endpoint=False)
        ts = np.rint(scipy.stats.beta.ppf(ts, 0.6, 0.6) * (N - 1))
        sigs, last = [], -1
        for t in ts:
            if t != last:
                sigs.append(float(sig[int(t)]))
            last = t
        return np.array(sigs + [0.0])
    if name == "linear_quadratic":  # linear_quadratic_schedule(threshold_noise=0.025)
        if steps == 1:
            sched = [1.0, 0.0]
        else:
            thr, lin = 0.025, steps // 2
            lin_s = [i * thr / lin for i in range(lin)]
            diff = lin - thr * steps
            quad = steps - lin
            qc = diff / (lin * quad**2)
            lc = thr / lin - 2 * diff / (quad**2)
            const = qc * lin**2
            quad_s = [qc * i**2 + lc * i + const for i in range(lin, steps)]
            sched = [1.0 - x for x in lin_s + quad_s + [1.0]]
        return np.array(sched) * s_max
    raise AssertionError(name)


_COMFY_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform",
                     "beta", "linear_quadratic", "kl_optimal")
_COMFY_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "ddim", "uni_pc",
                   "uni_pc_bh2")
_COMFY_NOT_EXACT = {
    "deis": "ComfyUI's DEIS integrates in the time of a VP-linear SDE fitted to EDM's "
            "sigma range with a 10,000-point Riemann sum (comfy/k_diffusion/deis.py); "
            "samplax's DEIS weights are exact",
    "ipndm": "ComfyUI's iPNDM jumps to the denoised sample on its last step; samplax's "
             "ipndm takes an Adams-Bashforth step there",
    "dpmpp_2s_ancestral": "no exact samplax equivalent (ancestral DPM-Solver++(2S))",
}
_DISCARD_PENULTIMATE = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")


def comfyui_preset(sampler: str, scheduler: str, steps: int, *, schedule=None) -> Preset:
    """The samplax plan that reproduces ComfyUI's ``KSampler(sampler, scheduler, steps)``.

    Reproduces ``comfy/samplers.py`` (``calculate_sigmas`` with its scheduler handlers,
    ``KSampler.calculate_sigmas`` with ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS``,
    ``KSAMPLER.sample`` with ``noise_scaling``/``max_denoise``) and the samplers of
    ``comfy/k_diffusion/sampling.py`` (vendored from crowsonkb/k-diffusion
    ``k_diffusion/sampling.py``) and ``comfy/extra_samplers/uni_pc.py`` on a discrete
    model (``comfy/model_sampling.py`` ``ModelSamplingDiscrete``): the solver runs on
    the scheduler's unrounded sigmas and the network is called at the nearest training
    label in ``log sigma`` (``ModelSamplingDiscrete.timestep``), which ``time_input``
    reproduces.

    Args:
        sampler: a ComfyUI sampler name, see ``PRESETS["comfyui sampler"]``.
        scheduler: a ComfyUI scheduler name, see ``PRESETS["comfyui scheduler"]``.
        steps: the KSampler's steps (denoise = 1).
        schedule: the model's :class:`~samplax.schedules.DiscreteVP`; default Stable
            Diffusion 1.x/2.x/XL's (ComfyUI's ``ModelSamplingDiscrete`` default:
            ``linear_start=0.00085``, ``linear_end=0.012``, "linear" in sqrt(beta),
            i.e. diffusers' ``scaled_linear``).

    Returns:
        A :class:`Preset` (``prediction_type="epsilon"``; a v-prediction model uses
        ``from_v`` with the same plan).

    Raises:
        ValueError: naming an unknown or inexpressible sampler or scheduler and the
            accepted names.
    """
    if sampler in _COMFY_NOT_EXACT:
        raise ValueError(f"ComfyUI sampler {sampler!r} is not reproducible exactly: "
                         f"{_COMFY_NOT_EXACT[sampler]}; accepted samplers: {list(_COMFY_SAMPLERS)}")
    if sampler not in _COMFY_SAMPLERS:
        raise ValueError(f"unknown or unsupported ComfyUI sampler {sampler!r}; accepted samplers: "
                         f"{list(_COMFY_SAMPLERS)}")
    if scheduler not in _COMFY_SCHEDULERS:
        raise ValueError(f"unknown or unsupported ComfyUI scheduler {scheduler!r}; accepted "
                         f"schedulers: {list(_COMFY_SCHEDULERS)}")
    steps = _check_steps(steps)
    if schedule is None:
        schedule = DiscreteVP.scaled_linear()
    if not isinstance(schedule, DiscreteVP):
        raise ValueError("schedule must be a samplax.schedules.DiscreteVP (ComfyUI's "
                         f"ModelSamplingDiscrete), got {type(schedule).__name__}; flow and "
                         "continuous ComfyUI models are not supported (accepted: DiscreteVP "
                         "or None for Stable Diffusion's)")
    sig = _train_sigmas(schedule)
    if not np.all(np.isfinite(sig)):
        raise ValueError("ComfyUI presets need a finite terminal SNR (sigma_max < inf)")
    discard = sampler in _DISCARD_PENULTIMATE
    sigmas = _comfy_sigmas(scheduler, sig, steps + 1 if discard else steps)
    if discard:
        sigmas = np.concatenate([sigmas[:-2], sigmas[-1:]])
    _check_decreasing(f"ComfyUI {sampler}/{scheduler}", sigmas)
    n = len(sigmas) - 1
    if n < 1:
        raise ValueError(f"ComfyUI {scheduler} with steps={steps} gives no step")
    # KSAMPLER.sample: noise_scaling(sigmas[0], noise, 0, max_denoise): noise * sqrt(1 + s^2)
    # (max_denoise) or noise * s, in x/alpha units; samplax's VP state is alpha times that.
    s0 = float(sigmas[0])
    max_denoise = math.isclose(s0, float(sig[-1]), rel_tol=1e-5) or s0 > float(sig[-1])
    init = 1.0 if max_denoise else s0 / math.sqrt(1.0 + s0**2)
    out_scale = 1.0
    note = ""
    if sampler in ("uni_pc", "uni_pc_bh2"):
        if n < 2:
            raise ValueError("ComfyUI uni_pc needs at least 2 steps (order = min(3, steps - 1))")
        if sigmas[-1] == 0:
            sigmas = sigmas.copy()
            sigmas[-1] = 0.001  # comfy/extra_samplers/uni_pc.py sample_unipc
            note = (" ComfyUI's uni_pc ends at sigma = 0.001 instead of 0 and returns x/alpha "
                    "there: output_scale = sqrt(1 + 0.001^2).")
        out_scale = math.sqrt(1.0 + sigmas[-1] ** 2)
    elif sigmas[-1] > 0:
        out_scale = math.sqrt(1.0 + sigmas[-1] ** 2)
    ts = _times(schedule, sigmas)
    tsj = jnp.asarray(ts)
    time_input = NetworkTime("nearest", schedule, sig)
    if sampler in ("euler", "ddim"):
        plan, call = euler(schedule, tsj), "samplax.euler"
    elif sampler == "euler_ancestral":
        plan, call = euler_ancestral(schedule, tsj, eta=1.0), "samplax.euler_ancestral(eta=1)"
    elif sampler == "heun":
        plan = heun(schedule, tsj, final_euler=bool(sigmas[-1] == 0))
        call = "samplax.heun (Euler into sigma = 0)"
    elif sampler == "dpm_2":
        plan, call = _dpm_2_plan(schedule, ts), "k-diffusion sample_dpm_2 (PlanBuilder)"
    elif sampler == "dpmpp_2m":
        orders = [1] + [2] * (n - 1)
        if sigmas[-1] == 0:
            orders[-1] = 1
        plan = dpm_solver_pp(schedule, tsj, orders=orders, solver_type="midpoint")
        call = f"samplax.dpm_solver_pp(orders={orders}, solver_type='midpoint')"
    else:
        order = min(3, n - 1)
        variant = "bh1" if sampler == "uni_pc" else "bh2"
        plan = build_unipc(schedule, tsj, step_orders(n, order, True), variant, True,
                           [True] * (n - 1) + [False])
        call = (f"samplax.solvers.unipc.build_unipc(order={order}, variant={variant!r}, "
                "lower_order_final, UniC on all steps but the last)")
    # network labels: nearest training label of each evaluated sigma
    log_st = -np.asarray(schedule.lam(plan.t), np.float64)
    labels = np.argmin(np.abs(log_st[:, None] - np.log(sig)[None, :]), axis=1)
    disc = " (steps + 1 sigmas, penultimate dropped)" if discard else ""
    text = (f"ComfyUI KSampler(sampler={sampler!r}, scheduler={scheduler!r}, steps={steps}){disc} "
            f"-> {call} on DiscreteVP(N={schedule.n}); network time: the training label nearest "
            f"in log sigma (ModelSamplingDiscrete.timestep); x_T = {init:.8g} * noise "
            f"({'max_denoise: ' if max_denoise else ''}noise_scaling). Source: {_COMFY} "
            "(calculate_sigmas, KSampler, KSAMPLER.sample), comfy/k_diffusion/sampling.py, "
            f"comfy/extra_samplers/uni_pc.py, comfy/model_sampling.py.{note}")
    return _preset(schedule, plan, ts, sigmas, labels, time_input, init, out_scale, "epsilon",
                   text)


# --------------------------------------------------------------------------------------
# Names, for the README table
# --------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "diffusers": {
        "DPMSolverMultistepScheduler": (
            "`algorithm_type` dpmsolver++ / dpmsolver, `solver_order` 1-3, `solver_type` "
            "midpoint / heun, `lower_order_final`, `euler_at_final`, `use_karras_sigmas` / "
            "`use_exponential_sigmas` / `use_lu_lambdas`, `timestep_spacing`, `steps_offset`, "
            "`final_sigmas_type`, `lambda_min_clipped`, `rescale_betas_zero_snr`",
            "`dpm_solver_pp` (dpmsolver++) or `dpm_solver` (dpmsolver), multistep, "
            "`third_order=\"published\"`, per-step `orders` as diffusers (`lower_order_final` "
            "below 15 steps, first order into sigma = 0)"),
        "UniPCMultistepScheduler": (
            "`solver_order`, `solver_type` bh1 / bh2, `predict_x0`, `disable_corrector`, "
            "`lower_order_final`, `use_karras_sigmas` / `use_exponential_sigmas`, `sigma_min` / "
            "`sigma_max`, `timestep_spacing`, `steps_offset`, `final_sigmas_type`, "
            "`rescale_betas_zero_snr`",
            "`solvers.unipc.build_unipc` (UniPC with UniC on every step but the last, orders "
            "`min(p, i + 1, n - i)`)"),
        "DEISMultistepScheduler": (
            "`solver_order` 1-3, `lower_order_final`, `use_karras_sigmas` / "
            "`use_exponential_sigmas`, `timestep_spacing`, `steps_offset`",
            "`dpm_solver(method=\"multistep\", solver_type=\"heun\", third_order=\"exact\")`: "
            "diffusers' log-rho DEIS integrates the Lagrange polynomial of `eps` in `lam` "
            "exactly, which is this noise-form multistep DPM-Solver"),
        "DDIMScheduler": (
            "`timestep_spacing`, `steps_offset`, `set_alpha_to_one`, `clip_sample=False`, "
            "`rescale_betas_zero_snr` (eta = 0)",
            "DDIM steps `tau -> tau - N // n` built with `PlanBuilder` (diffusers' target "
            "label may differ from the next evaluated one)"),
        "EulerDiscreteScheduler": (
            "`use_karras_sigmas` / `use_exponential_sigmas`, `sigma_min` / `sigma_max`, "
            "`timestep_spacing`, `steps_offset`, `final_sigmas_type`, `timestep_type`, "
            "`rescale_betas_zero_snr`",
            "`euler` (EDM view); network at the fractional label"),
        "EulerAncestralDiscreteScheduler": (
            "`timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`",
            "`euler_ancestral(eta=1)`"),
        "HeunDiscreteScheduler": (
            "`use_karras_sigmas` / `use_exponential_sigmas`, `timestep_spacing`, "
            "`steps_offset`, `beta_schedule` exp",
            "`heun(final_euler=True)`"),
        "FlowMatchEulerDiscreteScheduler": (
            "`shift`, `use_dynamic_shifting` + `mu`, `time_shift_type`, `shift_terminal`, "
            "`use_karras_sigmas` / `use_exponential_sigmas`",
            "Euler (= DDIM) on `RectifiedFlow` at `t = sigma`, from `t = 1`; network at `N t`"),
    },
    "comfyui sampler": {
        "euler": "`euler` (ComfyUI's `ddim` runs its `euler`)",
        "ddim": "`euler` (ComfyUI's `ddim` runs its `euler`)",
        "euler_ancestral": "`euler_ancestral(eta=1)`",
        "heun": "`heun` (Euler into sigma = 0)",
        "dpm_2": "k-diffusion `sample_dpm_2` (midpoint in log sigma, EDM view) built with "
                 "`PlanBuilder`",
        "dpmpp_2m": "`dpm_solver_pp(order=2)`, orders `1, 2, .., 2, 1`",
        "uni_pc": "`build_unipc(order=min(3, n - 1))`, bh1 / bh2, last sigma 0 replaced by "
                  "0.001 as ComfyUI does",
        "uni_pc_bh2": "`build_unipc(order=min(3, n - 1))`, bh1 / bh2, last sigma 0 replaced by "
                      "0.001 as ComfyUI does",
    },
    "comfyui scheduler": {
        name: "times of `comfy/samplers.py`'s sigmas on the model's `DiscreteVP` "
              "(`ModelSamplingDiscrete`); network at the nearest label"
        for name in _COMFY_SCHEDULERS
    },
}
"""Supported names: ``"diffusers"``: scheduler class -> (options, samplax plan);
``"comfyui sampler"`` / ``"comfyui scheduler"``: name -> samplax plan."""


def _grouped(table: dict) -> list[tuple[list[str], str]]:
    rows: list[tuple[list[str], str]] = []
    for name, plan in table.items():
        if rows and rows[-1][1] == plan:
            rows[-1][0].append(name)
        else:
            rows.append(([name], plan))
    return rows


def preset_table() -> str:
    """The markdown table of :data:`PRESETS` (the README's and this module's)."""
    rows = ["| tool | name and options | samplax plan |", "|---|---|---|"]
    for name, (opts, plan) in PRESETS["diffusers"].items():
        rows.append(f"| diffusers | `{name}`: {opts} | {plan} |")
    for kind in ("sampler", "scheduler"):
        for names, plan in _grouped(PRESETS[f"comfyui {kind}"]):
            label = ", ".join(f"`{n}`" for n in names)
            rows.append(f"| ComfyUI | {kind}{'s' if len(names) > 1 else ''} {label} | {plan} |")
    return "\n".join(rows)
