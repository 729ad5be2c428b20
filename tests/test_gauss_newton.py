"""Reweighted Levenberg-Marquardt (samplax.search.gauss_newton) on problems with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.search.gauss_newton import levenberg_marquardt

T = jnp.linspace(0.0, 2.0, 16)


def decay(params):
    """Per-sample exponential decays ``a_i exp(-b t)`` (one shared rate)."""
    return params["a"][:, None] * jnp.exp(-params["b"] * T)[None]


def test_fits_a_nonlinear_least_squares_problem_exactly():
    truth = {"a": jnp.array([1.0, 2.0, -0.5]), "b": jnp.asarray(1.3)}
    target = decay(truth)
    start = {"a": jnp.zeros(3), "b": jnp.asarray(0.2)}
    for rho in (lambda s: s, jnp.log):
        fit, before, after, steps, *_ = levenberg_marquardt(
            lambda p: decay(p) - target, start, lambda s: rho(s + 1e-30), iters=100)
        np.testing.assert_allclose(fit["b"], 1.3, rtol=1e-8)
        np.testing.assert_allclose(fit["a"], truth["a"], rtol=1e-8)
        assert after < before and 0 < steps <= 100


def test_log_objective_fits_the_majority_and_never_increases():
    """With one corrupted sample the mean log RMSE fits the other samples' shared
    rate far better than the mean RMSE, and every run ends no higher than it began."""
    truth = {"a": jnp.array([1.0, 2.0, -0.5, 1.5, 0.8]), "b": jnp.asarray(1.3)}
    target = decay(truth).at[0].add(jnp.sin(7 * T))  # sample 0: off the model
    start = {"a": jnp.ones(5), "b": jnp.asarray(1.0)}
    rates = {}
    for name, rho in {"mean": lambda s: s, "log": lambda s: jnp.log(s + 1e-30)}.items():
        fit, before, after, *_ = levenberg_marquardt(lambda p: decay(p) - target, start, rho,
                                                    iters=200)
        assert after <= before
        rates[name] = abs(float(fit["b"]) - 1.3)
    assert rates["log"] < 1e-3 * rates["mean"], rates


def test_iters_zero_returns_the_start_and_bad_iters_raise():
    start = {"a": jnp.ones(2), "b": jnp.asarray(0.5)}
    target = decay({"a": jnp.array([1.0, 3.0]), "b": jnp.asarray(1.0)})
    fit, before, after, steps, *_ = levenberg_marquardt(lambda p: decay(p) - target, start,
                                                    lambda s: s, iters=0)
    assert steps == 0 and before == after
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), fit, start))
    with pytest.raises(ValueError, match="iters"):
        levenberg_marquardt(lambda p: decay(p) - target, start, lambda s: s, iters=-1)


def test_chunked_jacobian_matches_one_chunk():
    """The forward-mode Jacobian in chunks (here 1 and 3 parameters, with padding) gives
    the same steps as in one chunk."""
    target = decay({"a": jnp.array([1.0, 2.0, -0.5]), "b": jnp.asarray(1.3)})
    start = {"a": jnp.zeros(3), "b": jnp.asarray(0.2)}
    runs = [levenberg_marquardt(lambda p: decay(p) - target, start, lambda s: s, iters=3,
                                chunk=c)[0] for c in (1, 3, 64)]
    for other in runs[:2]:
        np.testing.assert_allclose(other["a"], runs[2]["a"], rtol=1e-10)
        np.testing.assert_allclose(other["b"], runs[2]["b"], rtol=1e-10)
