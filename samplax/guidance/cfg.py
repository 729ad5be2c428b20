"""Classifier-free guidance and its relatives: rescale, weight schedules, interval, CFG++, APG.

A conditional model is ``model(x, t, cond) -> x0_hat`` (wrap epsilon/v models
with :mod:`samplax.models` adapters first). :func:`branches` evaluates the
conditional and unconditional predictions in *one batched call* (inputs and
conditions concatenated along the batch axis); :func:`pair` combines two
separate denoisers. Every transform here takes such branches and returns a
denoiser ``D(x, t)`` with a declared :class:`~samplax.guidance.cost.Cost`.

The guidance weight ``w`` follows the convention ``w = 1``: conditional model,
``w = 0``: unconditional model (diffusers' ``guidance_scale``; Ho & Salimans'
``w`` is ``w - 1`` here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from samplax.guidance._common import (
    NextStep,
    bcast,
    check_callable,
    check_space,
    check_weight,
    feature_std,
    feature_sum,
    from_space,
    safe_norm,
    to_space,
    weight_for,
)
from samplax.guidance.cost import Cost, cost_of
from samplax.schedules.base import describe, real_values
from samplax.solvers.executor import Segments

Array = Any


# --------------------------------------------------------------------------------------
# Conditional / unconditional branches
# --------------------------------------------------------------------------------------


def _per_sample(cond, n: int):
    """Broadcast every leaf of a condition pytree to a leading batch axis of size ``n``.

    A 0-d leaf is shared by all samples; otherwise the leading axis must be ``n``
    (one condition per sample) or 1 (shared).
    """

    def one(c):
        c = jnp.asarray(c)
        if c.ndim == 0:
            return jnp.broadcast_to(c, (n,))
        if c.shape[0] not in (1, n):
            raise ValueError(
                f"a condition's leading axis must be the batch ({n}) or 1, got shape {c.shape}"
            )
        return jnp.broadcast_to(c, (n,) + c.shape[1:])

    return jax.tree.map(one, cond)


def _anneal(anneal, cond, t):
    return cond if anneal is None else anneal(cond, t)


class Conditional(eqx.Module):
    """The denoiser ``x, t -> model(x, t, cond)`` for one fixed condition (1 forward pass)."""

    model: Callable
    cond: Any
    anneal: Any = None

    def __call__(self, x, t):
        return self.model(x, t, _anneal(self.anneal, _per_sample(self.cond, x.shape[0]), t))

    @property
    def cost(self) -> Cost:
        return Cost(1, 0)


class Branches(eqx.Module):
    """Conditional and unconditional predictions of one model in one batched call.

    ``__call__(x, t)`` evaluates ``model(concat([x, x]), t, concat([cond, uncond]))``
    once and splits the result into ``(x0_cond, x0_uncond)``. Costs two forward
    passes per sample. ``anneal`` (e.g. :func:`samplax.guidance.cads`) transforms
    the condition at each time; by default only the conditional one.
    """

    model: Callable
    cond: Any
    uncond: Any
    anneal: Any = None
    anneal_uncond: bool = eqx.field(default=False, static=True)

    def __call__(self, x, t):
        n = x.shape[0]
        c = _anneal(self.anneal, _per_sample(self.cond, n), t)
        u = _per_sample(self.uncond, n)
        if self.anneal_uncond:
            u = _anneal(self.anneal, u, t)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), c, u)
        tt = jnp.asarray(t)
        if tt.ndim:
            tt = jnp.concatenate([tt, tt])
        out = self.model(jnp.concatenate([x, x]), tt, both)
        return out[:n], out[n:]

    @property
    def cost(self) -> Cost:
        return Cost(2, 0)

    def conditional(self) -> Conditional:
        """The conditional branch alone (1 forward pass), e.g. outside a guidance interval."""
        return Conditional(self.model, self.cond, self.anneal)

    def unconditional(self) -> Conditional:
        return Conditional(self.model, self.uncond, self.anneal if self.anneal_uncond else None)


class Pair(eqx.Module):
    """Conditional and unconditional predictions from two separate denoisers."""

    cond_denoiser: Callable
    uncond_denoiser: Callable

    def __call__(self, x, t):
        return self.cond_denoiser(x, t), self.uncond_denoiser(x, t)

    @property
    def cost(self) -> Cost:
        return cost_of(self.cond_denoiser) + cost_of(self.uncond_denoiser)

    def conditional(self):
        return self.cond_denoiser

    def unconditional(self):
        return self.uncond_denoiser


def _check_branches(owner: str, b) -> None:
    if not isinstance(b, Branches | Pair):
        raise TypeError(
            f"{owner}: branches must be the conditional and unconditional branches from "
            "branches(model, cond, uncond) or pair(cond_denoiser, uncond_denoiser), got "
            f"{describe(b)}; a single denoiser has nothing to guide against"
        )


def branches(model: Callable, cond, uncond, *, anneal=None, anneal_uncond: bool = False):
    """Conditional and unconditional branches of ``model(x, t, cond)``, one batched call.

    Args:
        model: ``model(x, t, cond) -> x0_hat`` with ``x`` and every leaf of ``cond``
            batched on the leading axis.
        cond, uncond: the condition and the null condition (pytrees); a leaf's
            leading axis is the batch, or 1 / absent to share it.
        anneal: optional condition transform ``(cond, t) -> cond`` (CADS).
        anneal_uncond: also anneal the null condition.

    Example::

        b = branches(unet, text_emb, null_emb)
        guided = cfg(b, scale=5.0)
    """
    check_callable("branches", "model", model, "a conditional model model(x, t, cond)")
    if anneal is not None:
        check_callable("branches", "anneal", anneal, "a condition transform (cond, t) -> cond")
    return Branches(model, cond, uncond, anneal, anneal_uncond)


def pair(cond_denoiser: Callable, uncond_denoiser: Callable) -> Pair:
    """Branches from two denoisers ``D(x, t)`` (two calls; cost is the sum of theirs)."""
    check_callable("pair", "the conditional denoiser (cond_denoiser)", cond_denoiser,
                   "a denoiser D(x, t)")
    check_callable("pair", "the unconditional denoiser (uncond_denoiser)", uncond_denoiser,
                   "a denoiser D(x, t)")
    return Pair(cond_denoiser, uncond_denoiser)


# --------------------------------------------------------------------------------------
# CFG with rescale and weight schedules
# --------------------------------------------------------------------------------------


class CFG(eqx.Module):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6), optionally rescaled.

    ``x0 = x0_u + w(t) (x0_c - x0_u)``. The weights sum to one, so this is the
    same in x0, epsilon and v space (``eps_hat`` is affine in ``x0_hat`` at fixed
    ``x``). With ``rescale = phi > 0`` (Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", Sec. 3.4) the guided
    prediction ``g`` in ``rescale_space`` is pulled back towards the conditional
    one's per-sample standard deviation:
    ``g <- phi g std(c)/std(g) + (1 - phi) g``. The paper applies it to its
    v-prediction output, diffusers to epsilon (the default here); it is not
    space-agnostic and needs the ``schedule`` unless ``rescale_space == "x0"``.
    """

    branches: Any
    scale: Any
    rescale: float = eqx.field(default=0.0, static=True)
    rescale_space: str = eqx.field(default="eps", static=True)
    schedule: Any = None

    def __call__(self, x, t):
        dc, du = self.branches(x, t)
        w = weight_for("cfg: scale", self.scale, t, x)
        out = du + w * (dc - du)
        if self.rescale:
            sp = self.rescale_space
            yc = to_space(sp, self.schedule, x, t, dc)
            yg = to_space(sp, self.schedule, x, t, out)
            yr = yg * feature_std(yc) / feature_std(yg)
            out = from_space(sp, self.schedule, x, t, self.rescale * yr + (1 - self.rescale) * yg)
        return out

    @property
    def cost(self) -> Cost:
        return cost_of(self.branches)


def cfg(branches, scale, *, rescale: float = 0.0, rescale_space: str = "eps", schedule=None):
    """Classifier-free guidance with weight ``scale`` (a number or a function ``w(t)``).

    Args:
        branches: :func:`branches` or :func:`pair`.
        scale: guidance weight ``w`` (1: conditional, 0: unconditional) or ``w(t)``,
            e.g. :func:`weight_schedule`.
        rescale: Lin et al.'s ``phi`` (0.7 recommended there; 0 disables).
        rescale_space: ``"eps"`` (default, as diffusers), ``"x0"`` or ``"v"``.
        schedule: the noise schedule, needed to rescale in eps or v space.

    Example::

        guided = cfg(branches(model, y, null), scale=4.0, rescale=0.7, schedule=S)
        x0 = samplax.sample(guided, ddim(S, ts), x_T)
    """
    _check_branches("cfg", branches)
    check_weight("cfg", "scale", scale)
    r = real_values("cfg", "rescale", rescale, what="a finite number in [0, 1]")
    if r is not None and not (r.ndim == 0 and 0.0 <= r <= 1.0):
        raise ValueError(f"cfg: rescale must be a finite number in [0, 1], got "
                         f"{describe(rescale)}")
    check_space(rescale_space)
    if rescale and rescale_space != "x0" and schedule is None:
        raise ValueError(f"rescaling in {rescale_space!r} space needs the noise schedule")
    return CFG(branches, scale, float(rescale), rescale_space, schedule)


class LinearWeight(eqx.Module):
    """``w(t) = 1 + 2 (w - 1)(1 - t/t_max)``: guidance grows as noise falls, same mean."""

    w: Any
    t_max: float = 1.0

    def __call__(self, t):
        return 1.0 + 2.0 * (self.w - 1.0) * (1.0 - t / self.t_max)


class CosineWeight(eqx.Module):
    """``w(t) = 1 + (w - 1)(cos(pi t/t_max) + 1)``: increasing, same mean as constant ``w``."""

    w: Any
    t_max: float = 1.0

    def __call__(self, t):
        return 1.0 + (self.w - 1.0) * (jnp.cos(jnp.pi * t / self.t_max) + 1.0)


class IntervalWeight(eqx.Module):
    """``w`` while ``sigma_lo < sigma/alpha <= sigma_hi``, else 1 (the conditional model).

    This *masks* guidance: the unconditional branch is still evaluated (and
    paid for) everywhere. Use :func:`guidance_interval` to skip it.
    """

    w: Any
    schedule: Any
    sigma_lo: float
    sigma_hi: float

    def __call__(self, t):
        s = jnp.exp(-self.schedule.lam(t))
        inside = (s > self.sigma_lo) & (s <= self.sigma_hi)
        return jnp.where(inside, self.w, 1.0)


def weight_schedule(kind: str, w, t_max: float = 1.0):
    """A guidance-weight schedule ``w(t)`` to pass as ``scale``.

    ``"constant"``; ``"linear"`` and ``"cosine"``: the monotonically increasing
    schedulers of Wang et al. 2024 ("Analysis of classifier-free guidance weight
    schedulers"), written for the excess weight ``w - 1`` so that their average
    over ``t in [0, t_max]`` equals the constant schedule's.

    Example::

        guided = cfg(branches(model, y, null), weight_schedule("linear", 4.0))
    """
    if not isinstance(kind, str) or kind not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown weight schedule kind {kind!r}; use constant, linear or cosine")
    real_values("weight_schedule", "w", w, what="a finite number (the guidance weight)")
    tm = real_values("weight_schedule", "t_max", t_max, what="a finite number > 0")
    if tm is not None and not np.all(tm > 0):
        raise ValueError(f"weight_schedule: t_max must be a finite number > 0 (the time "
                         f"where sampling starts), got {describe(t_max)}")
    if kind == "constant":
        return w
    if kind == "linear":
        return LinearWeight(w, t_max)
    if kind == "cosine":
        return CosineWeight(w, t_max)
    raise ValueError(f"unknown weight schedule {kind!r}; use constant, linear or cosine")


# --------------------------------------------------------------------------------------
# Guidance interval: skip the unconditional branch outside a sigma window
# --------------------------------------------------------------------------------------


def guidance_interval(plan, guided, unguided, sigma_lo: float, sigma_hi: float) -> Segments:
    """Apply ``guided`` only on the slots with ``sigma_lo < sigma/alpha <= sigma_hi``.

    Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
    sample and distribution quality in diffusion models" (e.g. EDM2-XXL:
    ``(0.28, 5.42]`` in EDM sigma). ``sigma/alpha`` is the EDM noise level of each
    slot, read from the plan's concrete ``alpha``/``sigma``. The result is
    :class:`~samplax.solvers.executor.Segments`: outside the interval the slots
    run ``unguided`` (typically ``branches.conditional()``, one forward pass), so
    the unconditional evaluations are truly skipped, which
    :func:`~samplax.guidance.nfe_report` counts.

    Example::

        b = branches(model, y, null)
        den = guidance_interval(plan, cfg(b, 3.0), b.conditional(), 0.28, 5.42)
        x0 = samplax.sample(den, plan, x_T)
    """
    check_callable("guidance_interval", "guided", guided)
    check_callable("guidance_interval", "unguided", unguided)
    lo = real_values("guidance_interval", "sigma_lo", sigma_lo, finite=False,
                     what="a number >= 0 (an EDM noise level)")
    hi = real_values("guidance_interval", "sigma_hi", sigma_hi, finite=False,
                     what="a number (an EDM noise level; inf allowed)")
    if lo is None or hi is None:
        raise ValueError("guidance_interval needs concrete sigma_lo and sigma_hi (it splits "
                         "the plan's slots in Python)")
    if lo.ndim or hi.ndim:
        raise ValueError(f"guidance_interval: sigma_lo and sigma_hi must be scalars, got "
                         f"shapes {lo.shape}, {hi.shape}")
    if not (np.isfinite(lo) and lo >= 0):
        raise ValueError(f"guidance_interval: sigma_lo must be a finite number >= 0, got "
                         f"{describe(sigma_lo)}")
    if np.isnan(hi):
        raise ValueError(f"guidance_interval: sigma_hi must be a number, got {sigma_hi!r}")
    if sigma_lo >= sigma_hi:
        raise ValueError(f"need sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi}]")
    try:
        s = np.asarray(plan.sigma) / np.asarray(plan.alpha)
    except jax.errors.TracerArrayConversionError as err:
        raise ValueError("guidance_interval needs a plan with concrete times") from err
    if s.ndim != 1:
        raise ValueError("guidance_interval needs a single plan (not a stacked batch)")
    inside = (s > sigma_lo) & (s <= sigma_hi)
    if not inside.any():
        raise ValueError(
            f"guidance_interval: the interval (sigma_lo, sigma_hi] = ({sigma_lo:g}, "
            f"{sigma_hi:g}] contains no slot of the plan, whose EDM noise levels "
            f"sigma/alpha span [{s.min():.4g}, {s.max():.4g}]: guidance would never apply"
        )
    starts, dens = [], []
    for k, flag in enumerate(inside):
        if k == 0 or flag != inside[k - 1]:
            starts.append(k)
            dens.append(guided if flag else unguided)
    return Segments(tuple(dens), tuple(starts))


# --------------------------------------------------------------------------------------
# CFG++
# --------------------------------------------------------------------------------------


class CFGPlusPlus(eqx.Module):
    """CFG++ (Chung et al. 2024, "CFG++: manifold-constrained classifier free guidance").

    Acts in x0 space, then renoises with the *unconditional* epsilon: the DDIM
    step of Algorithm 1 is ``x_t = alpha_t x0_lam + sigma_t eps_u`` with
    ``x0_lam = x0_u + lam (x0_c - x0_u)``, ``lam in [0, 1]``. Since a DDIM step
    takes ``eps`` from the denoiser output, that step equals DDIM with the
    effective data prediction ``x0_u + lam (x0_c - x0_u)/g``,
    ``g = 1 - e^{-h}`` for the step ``s -> t`` (``h = lam_t - lam_s``; see
    :class:`~samplax.guidance._common.NextStep`, which also covers DDIM(eta)).
    So it needs the sampler's ``timesteps``. Exact for DDIM/Euler on those
    timesteps; with other solvers it is a first-order analogue, not the paper's
    per-solver variants. At the last step to ``sigma = 0`` it returns ``x0_lam``.
    """

    branches: Any
    lam: Any
    step: NextStep

    def __call__(self, x, t):
        dc, du = self.branches(x, t)
        _, gain = self.step(t)
        lam = weight_for("cfg_pp: lam", self.lam, t, x)
        return du + lam * (dc - du) / bcast(gain, x)

    @property
    def cost(self) -> Cost:
        return cost_of(self.branches)


def cfg_pp(branches, lam, schedule, timesteps, *, eta: float = 0.0) -> CFGPlusPlus:
    """CFG++ with guidance ``lam`` in ``[0, 1]`` for a DDIM(eta) sampler on ``timesteps``.

    Example::

        guided = cfg_pp(branches(model, y, null), 0.6, S, ts)
        x0 = samplax.sample(guided, ddim(S, ts), x_T)
    """
    _check_branches("cfg_pp", branches)
    check_weight("cfg_pp", "lam", lam)
    if not callable(lam) and not isinstance(lam, jax.core.Tracer):
        if not np.all((0.0 <= np.asarray(lam, float)) & (np.asarray(lam, float) <= 1.0)):
            raise ValueError(f"CFG++ takes lam in [0, 1], got {lam}")
    return CFGPlusPlus(branches, lam, NextStep(schedule, jnp.asarray(timesteps), eta))


# --------------------------------------------------------------------------------------
# APG
# --------------------------------------------------------------------------------------


class APG(eqx.Module):
    """Adaptive projected guidance (Sadat, Hilliges & Weber 2025, "Eliminating
    oversaturation and artifacts of high guidance scales in diffusion models").

    With ``c``, ``u`` the conditional and unconditional predictions in ``space``
    (default x0, the denoised prediction used by the paper):

    1. ``diff = c - u``; reverse momentum ``m <- diff + beta m`` (``beta < 0``)
       and ``diff = m``;
    2. norm clip ``diff <- diff min(1, r/||diff||)`` (``r = norm_threshold``, off if 0);
    3. split ``diff`` into ``par``, its projection on ``c``, and ``orth = diff - par``;
    4. ``guided = c + (w - 1)(orth + eta par)``.

    ``eta = 1``, ``beta = 0``, ``r = 0`` is plain CFG. Norms and projections are
    per sample over all non-batch axes. Momentum makes APG *stateful*: the
    executor carries ``m`` across slots (one update per network evaluation), so
    with ``momentum != 0`` hand APG directly to ``sample`` (or as a
    ``Segments`` entry), not wrapped in another transform; SMC resampling hooks
    do not reorder ``m``.
    """

    branches: Any
    scale: Any
    eta: float = 0.0
    momentum: float = eqx.field(default=-0.5, static=True)
    norm_threshold: float = eqx.field(default=0.0, static=True)
    space: str = eqx.field(default="x0", static=True)
    schedule: Any = None

    def init_state(self, x_T):
        return jnp.zeros_like(x_T)

    def step(self, state, x, t):
        dc, du = self.branches(x, t)
        yc = to_space(self.space, self.schedule, x, t, dc)
        yu = to_space(self.space, self.schedule, x, t, du)
        diff = yc - yu
        if self.momentum:
            diff = diff + self.momentum * state
        state = diff
        if self.norm_threshold > 0:
            n = safe_norm(diff)
            diff = diff * jnp.minimum(1.0, self.norm_threshold / jnp.where(n > 0, n, 1.0))
        unit = yc / jnp.where(safe_norm(yc) > 0, safe_norm(yc), 1.0)
        par = feature_sum(diff * unit) * unit
        orth = diff - par
        w = weight_for("apg: scale", self.scale, t, x)
        guided = yc + (w - 1.0) * (orth + self.eta * par)
        return from_space(self.space, self.schedule, x, t, guided), state

    def __call__(self, x, t):
        if self.momentum:
            raise ValueError(
                "APG with momentum is stateful: pass it to samplax.sample directly "
                "(the executor carries its momentum), not inside another transform"
            )
        return self.step(jnp.zeros_like(x), x, t)[0]

    @property
    def cost(self) -> Cost:
        return cost_of(self.branches)


def apg(
    branches,
    scale,
    *,
    eta: float = 0.0,
    momentum: float = -0.5,
    norm_threshold: float = 0.0,
    space: str = "x0",
    schedule=None,
) -> APG:
    """Adaptive projected guidance; see :class:`APG`.

    Args:
        branches: :func:`branches` or :func:`pair`.
        scale: guidance weight ``w`` (or ``w(t)``).
        eta: weight of the parallel component (0 removes it: the paper's choice).
        momentum: ``beta``, negative for the paper's reverse momentum; 0 disables.
        norm_threshold: ``r``, the largest norm of the guidance update (0 disables).
        space: ``"x0"`` (default), ``"eps"`` or ``"v"``; eps/v need ``schedule``.

    Example::

        den = apg(branches(model, y, null), 7.5, momentum=-0.5, norm_threshold=2.5)
        x0 = samplax.sample(den, plan, x_T)
    """
    _check_branches("apg", branches)
    check_weight("apg", "scale", scale)
    real_values("apg", "eta", eta, what="a finite number (weight of the parallel part)")
    real_values("apg", "momentum", momentum, what="a finite number (beta; 0 disables)")
    r = real_values("apg", "norm_threshold", norm_threshold, finite=False,
                    what="a number (the largest update norm; 0 disables)")
    if r is not None and np.any(np.isnan(r)):
        raise ValueError(f"apg: norm_threshold must be a number (0 disables), got "
                         f"{describe(norm_threshold)}")
    check_space(space)
    if space != "x0" and schedule is None:
        raise ValueError(f"APG in {space!r} space needs the noise schedule")
    return APG(branches, scale, eta, float(momentum), float(norm_threshold), space, schedule)
