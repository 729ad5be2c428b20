"""One keep-best optimizer driver over optax, for every gradient loop of samplax.

Every Adam loop of the search (the population's refinement, the free-plan fit with
``method="adam"``, the per-coordinate fit, the times-only baseline) and DC-Solver's
ratio fit run through :func:`make_minimizer`: a jitted optax step (``vmap``-ped
over a stacked population when ``batched``) that keeps the best iterate it visited,
holds masked parameters fixed, and leaves a candidate where it was when its loss or
gradient is not finite, so a fit never returns something worse than its start.

The learning rate is injected (``optax.inject_hyperparams``) and set from the host
at every step: one compiled step then serves every learning rate, schedule,
iteration count and population size of a loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class MinimizeState(NamedTuple):
    params: Any
    opt_state: optax.OptState
    best: Any
    best_loss: jax.Array


class Minimized(NamedTuple):
    """What :meth:`Minimizer.run` returns: the best parameters, their loss (by the
    training loss, or by ``score`` when one is given) and the starting loss."""

    params: Any
    loss: Any
    start: Any


class Minimizer(NamedTuple):
    """Jitted ``init`` and ``step`` of :func:`make_minimizer`; :meth:`run` drives them."""

    init: Callable
    step: Callable
    batched: bool

    def run(self, params, aux=None, *, iters: int, lr, score: Callable | None = None,
            checks: int = 16) -> Minimized:
        """``iters`` steps from ``params``.

        Args:
            params: the starting parameters (with a leading population axis when
                the minimizer is ``batched``).
            aux: the loss's second argument (stacked like ``params`` when batched).
            iters: optimizer steps.
            lr: the learning rate: a number, or an optax schedule ``k -> lr`` of the
                step index (e.g. ``optax.cosine_decay_schedule``).
            score: ``score(params) -> float`` to choose the iterate by instead of
                the training loss (unbatched only), e.g. the loss on noises kept out
                of the fit; scored at the start and after ``checks`` evenly spaced
                steps, the best iterate kept.

        Returns:
            :class:`Minimized`. Without ``score`` the best iterate is the one of
            lowest training loss among those the steps were taken from (the last
            update is not scored), per candidate when batched.
        """
        if score is not None and self.batched:
            raise ValueError("score= chooses one iterate: use an unbatched minimizer")
        leaf = jax.tree.leaves(params)[0]
        rate = lr if callable(lr) else (lambda k: lr)
        shape = (leaf.shape[0],) if self.batched else ()

        def learning_rate(k):
            return jnp.full(shape, rate(k), leaf.dtype)

        state = self.init(params, aux, learning_rate(0))
        start = state.best_loss
        if score is not None:
            best, best_score = params, float(score(params))
            start = best_score
            marks = score_marks(iters, checks)
        for k in range(iters):
            # a new value, not a new shape: the jitted step is not retraced
            state.opt_state.hyperparams["learning_rate"] = learning_rate(k)
            state = self.step(state, aux)
            if score is not None and k + 1 in marks:
                s = float(score(state.params))
                if np.isfinite(s) and s < best_score:
                    best, best_score = state.params, s
        if score is not None:
            return Minimized(best, best_score, start)
        return Minimized(state.best, state.best_loss, start)


def score_marks(iters: int, checks: int) -> set[int]:
    """The steps after which :meth:`Minimizer.run` scores the iterate (``score=``)."""
    return set(np.linspace(0, iters, checks + 1).round().astype(int)[1:].tolist())


def make_minimizer(loss: Callable, *, mask=None, batched: bool = False,
                   optimizer: Callable = optax.adam) -> Minimizer:
    """A keep-best optax minimizer of ``loss(params, aux) -> scalar``.

    Args:
        loss: the objective; ``aux`` carries its data (``None`` if it closes over it).
        mask: a pytree of bools of ``params``' structure; ``False`` leaves stay fixed.
        batched: ``vmap`` over a leading population axis of ``params`` and ``aux``,
            each candidate with its own optimizer state and best iterate.
        optimizer: an optax optimizer factory taking ``learning_rate``.
    """
    opt = optax.inject_hyperparams(optimizer)(learning_rate=0.0)
    vg = jax.value_and_grad(loss)

    def init(params, aux, lr):
        state = opt.init(params)
        state.hyperparams["learning_rate"] = lr
        return MinimizeState(params, state, params, loss(params, aux))

    def step(st: MinimizeState, aux):
        v, g = vg(st.params, aux)
        finite = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(g)]
        ok = jnp.isfinite(v) & jnp.all(jnp.stack(finite))
        better = ok & (v < st.best_loss)
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), st.params, st.best)
        best_loss = jnp.where(better, v, st.best_loss)
        if mask is not None:
            g = jax.tree.map(lambda gi, m: gi if m else jnp.zeros_like(gi), g, mask)
        g = jax.tree.map(lambda a: jnp.where(ok, a, jnp.zeros_like(a)), g)
        upd, opt_state = opt.update(g, st.opt_state, st.params)
        return MinimizeState(optax.apply_updates(st.params, upd), opt_state, best, best_loss)

    if batched:
        init, step = jax.vmap(init), jax.vmap(step)
    return Minimizer(jax.jit(init), jax.jit(step), batched)


def cosine_to(lr: float, lr_end: float | None, iters: int):
    """The learning rate ``lr`` decaying to ``lr_end`` over ``iters`` steps along a half
    cosine (``optax.cosine_decay_schedule``), or the constant ``lr`` if ``lr_end`` is
    None."""
    if lr_end is None:
        return lr
    return optax.cosine_decay_schedule(lr, max(iters - 1, 1), alpha=lr_end / lr)


__all__ = ["Minimized", "Minimizer", "cosine_to", "make_minimizer", "score_marks"]
