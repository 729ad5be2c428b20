"""Gradient guidance: classifier guidance, DPS and the training-free guidance (TFG) family.

Gradients come from ``jax.grad``/``jax.vjp``. Two unit conventions appear, as
in the papers:

- *score units* (classifier guidance, DPS with a noise level): a term
  ``grad_x log p(y | x_t)`` is added to the score, i.e.
  ``eps <- eps - w sigma grad`` or equivalently ``x0 <- x0 + w (sigma^2/alpha) grad``
  (Tweedie). Works with every solver.
- *state units* (DPS with a step size ``zeta``, TFG): a gradient is added to
  the sampler's next state ``x_{t-1}``. Expressed as a change of ``x0_hat``
  through the DDIM step on the sampler's ``timesteps``
  (:class:`~samplax.guidance._common.NextStep`): exact for DDIM(eta) and
  Euler, a first-order analogue elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from samplax.guidance._common import (
    NextStep,
    bcast,
    check_callable,
    check_weight,
    coefficients,
    feature_sum,
    grad_sum,
    safe_norm,
    time_key,
    weight_at,
    weight_for,
)
from samplax.guidance.cost import FREE, Cost, cost_of, with_backward
from samplax.solvers._common import check_timesteps
from samplax.solvers.executor import sample_noise
from samplax.solvers.plan import Plan, PlanBuilder

Array = Any


def _is_zero(v) -> bool:
    return isinstance(v, int | float) and v == 0


# --------------------------------------------------------------------------------------
# Classifier guidance
# --------------------------------------------------------------------------------------


class ClassifierGuidance(eqx.Module):
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion models beat GANs", Algorithm 2).

    In epsilon space ``eps <- eps - w sigma grad_x log p(y | x_t, t)``; in x0 space
    ``x0 <- x0 + w (sigma^2/alpha) grad_x log p(y | x_t, t)``. With ``w = 1`` and
    the exact classifier, ``grad log p(x_t) + grad log p(y | x_t) = grad log p(x_t | y)``,
    so the result is the exact conditional denoiser.
    """

    denoiser: Callable
    log_prob: Callable
    schedule: Any
    scale: Any = 1.0
    classifier_cost: Cost = eqx.field(default=Cost(1, 1), static=True)

    def __call__(self, x, t):
        g = grad_sum(lambda v: self.log_prob(v, t), x)
        a, s = coefficients(self.schedule, t, x)
        w = weight_for("classifier_guidance: scale", self.scale, t, x)
        return self.denoiser(x, t) + w * (s * s / a) * g

    @property
    def cost(self) -> Cost:
        return cost_of(self.denoiser) + self.classifier_cost


def classifier_guidance(
    denoiser: Callable,
    log_prob: Callable,
    schedule,
    scale=1.0,
    *,
    classifier_cost: Cost = Cost(1, 1),
) -> ClassifierGuidance:
    """Guide ``denoiser`` with a differentiable noisy classifier.

    Args:
        denoiser: the (unconditional) denoiser ``D(x, t)``.
        log_prob: ``log_prob(x, t) -> [batch]``, ``log p(y | x_t = x)`` for the
            target ``y`` (close over ``y``).
        schedule: the noise schedule (for ``alpha``, ``sigma``).
        scale: ``w`` (a number or ``w(t)``).
        classifier_cost: network passes of the classifier per slot (forward and
            backward); set ``Cost(0, 0)`` to count only the diffusion model.

    Example::

        den = classifier_guidance(D, lambda x, t: log_softmax(clf(x, t))[:, y], S, 2.0)
    """
    check_callable("classifier_guidance", "denoiser", denoiser)
    check_callable("classifier_guidance", "log_prob", log_prob,
                   "a classifier log-probability log_prob(x, t) -> [batch]")
    check_weight("classifier_guidance", "scale", scale)
    return ClassifierGuidance(denoiser, log_prob, schedule, scale, classifier_cost)


# --------------------------------------------------------------------------------------
# DPS
# --------------------------------------------------------------------------------------


class DPS(eqx.Module):
    """Diffusion posterior sampling (Chung et al. 2023, "Diffusion posterior sampling for
    general noisy inverse problems").

    Measurements ``y = A(x0) + n``; the likelihood is approximated through the
    denoiser, ``p(y | x_t) ~ p(y | x0_hat(x_t))``, and differentiated
    through it with ``jax.vjp`` (one backward pass per slot).

    - ``zeta`` given (Algorithm 1, as in the official code): the next state gets
      ``- zeta grad_{x_t} ||y - A(x0_hat(x_t))||`` (the norm, not squared), which
      is converted to x0 space through the DDIM step on ``timesteps``.
    - ``noise_std`` given (score units, every solver): Gaussian likelihood
      ``log p = -||y - A(x0_hat)||^2 / (2 noise_std^2)``, added as
      ``x0 <- x0 + (sigma^2/alpha) grad_{x_t} log p``.
    """

    denoiser: Callable
    operator: Callable
    y: Array
    schedule: Any
    noise_std: Any = None
    zeta: Any = None
    step: NextStep | None = None

    def __call__(self, x, t):
        d, vjp = jax.vjp(lambda v: self.denoiser(v, t), x)
        if self.zeta is not None:
            def resid(x0):
                return safe_norm(self.y - self.operator(x0)).reshape(-1)

            g0 = grad_sum(resid, d)
            (gx,) = vjp(g0)
            a_next, gain = self.step(t)
            z = bcast(weight_at(self.zeta, t), x)
            return d - z * gx / bcast(a_next * gain, x)

        def loglik(x0):
            r = self.y - self.operator(x0)
            return -0.5 * feature_sum(r * r).reshape(-1) / self.noise_std**2

        (gx,) = vjp(grad_sum(loglik, d))
        a, s = coefficients(self.schedule, t, x)
        return d + (s * s / a) * gx

    @property
    def cost(self) -> Cost:
        return with_backward(cost_of(self.denoiser))


def dps(
    denoiser: Callable,
    schedule,
    operator: Callable,
    y,
    *,
    noise_std=None,
    zeta=None,
    timesteps=None,
    eta: float = 0.0,
) -> DPS:
    """Diffusion posterior sampling for ``y = operator(x0) + noise``.

    Give either ``noise_std`` (likelihood in score units) or ``zeta`` together with
    the sampler's ``timesteps`` (and ``eta`` for a stochastic DDIM), as in
    :class:`DPS`. ``operator`` maps a batch of x0 to a batch of measurements.

    Example::

        den = dps(D, S, lambda x: x @ A.T, y, noise_std=0.05)
        den = dps(D, S, lambda x: x @ A.T, y, zeta=1.0, timesteps=ts)  # paper's step
    """
    if (noise_std is None) == (zeta is None):
        raise ValueError("give exactly one of noise_std (score units) or zeta (step size)")
    step = None
    if zeta is not None:
        if timesteps is None:
            raise ValueError("DPS with a step size zeta needs the sampler's timesteps")
        step = NextStep(schedule, jnp.asarray(timesteps), eta)
    return DPS(denoiser, operator, jnp.asarray(y), schedule, noise_std, zeta, step)


# --------------------------------------------------------------------------------------
# TFG
# --------------------------------------------------------------------------------------


class TFG(eqx.Module):
    """Training-free guidance (Ye et al. 2024, "TFG: unified training-free guidance for
    diffusion models", Algorithm 1) for a target ``log f(x0)`` (a log-likelihood,
    log classifier probability or reward).

    At a step ``s -> t`` with ``x0 = x0_hat(x_s)``:

    - implicit dynamics (``gamma``): ``f`` is replaced by its Gaussian smoothing
      ``f~(x0) = E_delta f(x0 + gamma sigma_s delta)``, estimated with ``n_mc``
      draws (log-mean-exp) from a key that depends on ``key`` and the time;
    - variance guidance (``rho``): ``Delta_t = rho grad_{x_s} log f~(x0_hat(x_s))``
      (through the denoiser, one backward pass), added to the next state as
      ``(alpha_t/alpha_s) Delta_t``;
    - mean guidance (``mu``, ``n_iter``): ``n_iter`` ascent steps
      ``x0 <- x0 + mu grad_{x0} log f~(x0)`` (no network call); ``Delta_0`` is the
      change of ``x0`` with the noise prediction held fixed (next state gains
      ``alpha_t Delta_0``);
    - recurrence (``N_recur``): a property of the sampler, not of the
      denoiser: use :func:`recurrent_ddim` with ``n_recur``.

    Both updates act on the next state of the DDIM(eta) step over ``timesteps``
    and are expressed here as a change of ``x0_hat`` (see
    :class:`~samplax.guidance._common.NextStep`). Special cases: DPS is
    ``mu = 0, gamma = 0, n_recur = 1`` with ``log f = -||y - A x0||`` (up to the
    ``alpha_t/alpha_s ~ 1`` factor; :func:`dps` has the exact form); LGD adds
    ``gamma > 0``; FreeDoM adds recurrence; MPGD is ``rho = 0, mu > 0``; UGD is
    ``mu > 0`` with recurrence. ``rho`` and ``mu`` may be functions of ``t``.
    Not included: the official code's per-sample gradient clipping.
    """

    denoiser: Callable
    log_f: Callable
    schedule: Any
    step: NextStep
    rho: Any = 0.0
    mu: Any = 0.0
    gamma: float = eqx.field(default=0.0, static=True)
    n_iter: int = eqx.field(default=1, static=True)
    n_mc: int = eqx.field(default=1, static=True)
    key: Array | None = None
    guide_cost: Cost = eqx.field(default=FREE, static=True)

    def _log_ft(self, t, x):
        if self.gamma == 0:
            return self.log_f
        std = bcast(self.gamma * self.schedule.sigma(t), x)
        k = time_key(self.key, t)
        deltas = jnp.stack(
            [sample_noise(jax.random.fold_in(k, m), x.shape, x.dtype) for m in range(self.n_mc)]
        )

        def log_ft(x0):
            vals = jax.vmap(lambda dl: self.log_f(x0 + std * dl))(deltas)  # [n_mc, batch]
            return jax.nn.logsumexp(vals, axis=0) - jnp.log(float(self.n_mc))

        return log_ft

    def __call__(self, x, t):
        log_ft = self._log_ft(t, x)
        if _is_zero(self.rho):
            d = self.denoiser(x, t)
            delta_t = jnp.zeros_like(d)
        else:
            d, vjp = jax.vjp(lambda v: self.denoiser(v, t), x)
            (gx,) = vjp(grad_sum(log_ft, d))
            delta_t = bcast(weight_at(self.rho, t), x) * gx
        x0 = d
        if not _is_zero(self.mu):
            mu = bcast(weight_at(self.mu, t), x)
            for _ in range(self.n_iter):
                x0 = x0 + mu * grad_sum(log_ft, x0)
        _, gain = self.step(t)
        a_s = bcast(self.schedule.alpha(t), x)
        # next state += (alpha_t/alpha_s) delta_t + alpha_t delta_0 = alpha_t gain * dx0
        return d + (delta_t / a_s + (x0 - d)) / bcast(gain, x)

    @property
    def cost(self) -> Cost:
        c = cost_of(self.denoiser)
        return (c if _is_zero(self.rho) else with_backward(c)) + self.guide_cost


def tfg(
    denoiser: Callable,
    log_f: Callable,
    schedule,
    timesteps,
    *,
    rho=0.0,
    mu=0.0,
    gamma: float = 0.0,
    n_iter: int = 1,
    n_mc: int = 1,
    key=None,
    eta: float = 0.0,
    guide_cost: Cost = FREE,
) -> TFG:
    """Training-free guidance with TFG's hyper-parameters; see :class:`TFG`.

    Args:
        denoiser: the unconditional denoiser ``D(x, t)``.
        log_f: ``log_f(x0) -> [batch]``, the log target (e.g. ``log p(y | x0)``).
        schedule: the noise schedule.
        timesteps: the sampler's times (DDIM or :func:`recurrent_ddim` over them).
        rho, mu: variance- and mean-guidance strengths (numbers or functions of t).
        gamma: implicit-dynamics smoothing (std ``gamma sigma_t``), with ``n_mc`` draws
            from ``key`` (required when ``gamma > 0``).
        n_iter: mean-guidance iterations.
        eta: the DDIM eta of the sampler (``recurrent_ddim(..., eta=eta)``).
        guide_cost: network passes of ``log_f`` per slot, if it is a network.

    Example::

        ts = jnp.linspace(1.0, 1e-3, 51)
        den = tfg(D, log_f, S, ts, rho=0.5, mu=0.2, gamma=0.1, key=jax.random.key(0))
        x0 = samplax.sample(den, recurrent_ddim(S, ts, n_recur=2), x_T, key)
    """
    if gamma > 0 and key is None:
        raise ValueError("TFG's implicit dynamics (gamma > 0) need a PRNG key")
    if n_iter < 0 or n_mc < 1:
        raise ValueError("need n_iter >= 0 and n_mc >= 1")
    step = NextStep(schedule, jnp.asarray(timesteps), eta)
    return TFG(denoiser, log_f, schedule, step, rho, mu, float(gamma), int(n_iter), int(n_mc),
               key, guide_cost)


# --------------------------------------------------------------------------------------
# DDIM(eta) with recurrence (TFG's N_recur, FreeDoM's time travel)
# --------------------------------------------------------------------------------------


def recurrent_ddim(schedule, timesteps, *, eta: float = 0.0, n_recur: int = 1) -> Plan:
    """DDIM(eta) (Song et al. 2021, eq. 12) where each step is repeated ``n_recur`` times.

    Step ``s -> t`` (``h = lam_t - lam_s``)::

        x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) (x_s - alpha_s x0_hat)/sigma_s + c z,
        c = eta sigma_t sqrt(1 - e^{-2h}),

    (``eta = 1`` is the DDPM-like ancestral sampler). With recurrence (TFG's
    ``N_recur``; FreeDoM's time travel), the new state is renoised back to ``s``,
    ``x_s = (alpha_s/alpha_t) x_t + sqrt(sigma_s^2 - (alpha_s/alpha_t)^2 sigma_t^2) z'``,
    and the step is redone; the last repetition is kept. The two noises of one
    slot are merged into a single Gaussian of the summed variance (the executor
    draws one per slot). NFE = ``n_recur (len(timesteps) - 1)``; ``eta = 0,
    n_recur = 1`` is deterministic DDIM.

    Example::

        plan = recurrent_ddim(S, jnp.linspace(1.0, 1e-3, 51), eta=1.0)  # DDPM-like
        x0 = samplax.sample(D, plan, x_T, jax.random.key(0))
    """
    if n_recur < 1:
        raise ValueError(f"n_recur must be at least 1, got {n_recur}")
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    ts = check_timesteps(schedule, timesteps)
    b = PlanBuilder(schedule)
    for i in range(ts.shape[0] - 1):
        s, t = ts[i], ts[i + 1]
        a_s, s_s = schedule.alpha(s), schedule.sigma(s)
        a_t, s_t = schedule.alpha(t), schedule.sigma(t)
        e = jnp.exp(-(schedule.lam(t) - schedule.lam(s)))
        c = eta * s_t * jnp.sqrt(1.0 - e * e)
        c_eps = s_t * jnp.sqrt(1.0 - eta**2 * (1.0 - e * e))
        for r in range(n_recur):
            out = b.evaluate(b.x, s)
            x_t = a_t * out.d + (c_eps / s_s) * (b.x - a_s * out.d)
            if r == n_recur - 1:
                b.set_x(x_t + c * b.noise() if eta > 0 else x_t)
            else:
                k = a_s / a_t
                std = jnp.sqrt(k * k * c * c + s_s * s_s - k * k * s_t * s_t)
                b.set_x(k * x_t + std * b.noise())
    return b.build()
