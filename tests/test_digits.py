"""The packaged 8x8-digits denoiser and the feature Fréchet distance."""

import json
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import digits, digits_features
from samplax.models.builtin import builtin
from samplax.models.digits import digits_data, load_digits_denoiser
from samplax.models.digits_features import (
    classifier_accuracy,
    frechet_distance,
    frechet_distance_from_stats,
)
from samplax.schedules.vp import VPLinear
from samplax.solvers.ddim import ddim
from samplax.solvers.executor import sample

# Thresholds. Measured with the committed checkpoints: this test's 50-step DDIM samples
# (600, seed 5) against all 1797 digits 0.54, its N(0, I) input 11.0; disjoint random
# halves of the real digits (898 each) 0.30-0.43; held-out classifier accuracy 0.986.
FD_50_STEPS_MAX = 1.0
TEST_ACCURACY_MIN = 0.96


def _logsnr_times(schedule, n, t_start=1.0, t_end=1e-3):
    lam = jnp.linspace(schedule.lam(t_start), schedule.lam(t_end), n + 1)
    return schedule.t_of_lam(lam).at[0].set(t_start).at[-1].set(t_end)


def test_checkpoints_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access during checkpoint loading")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    digits._denoiser_checkpoint.cache_clear()
    digits_features._classifier.cache_clear()
    D = load_digits_denoiser()
    x = jnp.asarray(digits_data()[:4])
    assert np.all(np.isfinite(np.asarray(D(x, 0.5))))
    assert np.all(np.isfinite(np.asarray(digits_features.digits_features(x))))
    sizes = {}
    for name in ("digits_denoiser", "digits_classifier"):
        sizes[name] = len(digits.checkpoint_path(name, "msgpack").read_bytes())
        config = json.loads(digits.checkpoint_path(name, "json").read_text())
        assert config["format_version"] == 1 and config["kind"] == name
    assert sizes["digits_denoiser"] < 2_000_000 and sizes["digits_classifier"] < 1_000_000


def test_digits_data():
    x, y = digits_data(return_labels=True)
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == -1.0 and x.max() == 1.0
    assert len(digits_data("train")) + len(digits_data("test")) == 1797
    with pytest.raises(ValueError, match="split"):
        digits_data("validation")


def _check_denoiser(dtype):
    D = load_digits_denoiser()
    key = jax.random.key(0)
    x = jax.random.normal(key, (6, 64), dtype)
    t = jnp.array([1.0, 0.7, 0.3, 0.1, 1e-2, 1e-3], dtype)
    for tt in (1.0, 0.5, 1e-3, 0.0):
        out = D(x, tt)
        assert out.shape == x.shape and out.dtype == dtype
        assert np.all(np.isfinite(np.asarray(out)))
    per_sample = D(x, t)
    assert per_sample.shape == x.shape and per_sample.dtype == dtype
    one_by_one = jnp.stack([D(x, t[i])[i] for i in range(len(t))])
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(per_sample, one_by_one, rtol=tol, atol=tol)
    # sigma = 0 (t = 0): the preconditioned denoiser returns its input
    np.testing.assert_allclose(D(x, 0.0), x, rtol=tol, atol=tol)


def test_denoiser_float64():
    _check_denoiser(jnp.float64)


def test_denoiser_float32(float32):
    _check_denoiser(jnp.float32)


def test_denoiser_float32_matches_float64():
    D = load_digits_denoiser()
    x = jax.random.normal(jax.random.key(1), (8, 64), jnp.float64)
    out64 = D(x, 0.3)
    out32 = D(x.astype(jnp.float32), jnp.float32(0.3))
    np.testing.assert_allclose(out32, out64, atol=1e-4)


def test_fifty_step_samples_close_to_data(float32):
    schedule = VPLinear()
    D = load_digits_denoiser(schedule)
    x_T = jax.random.normal(jax.random.key(5), (600, 64), jnp.float32)
    out = jax.jit(sample, static_argnums=0)(D, ddim(schedule, _logsnr_times(schedule, 50)), x_T)
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    data = digits_data().astype(np.float32)
    fd_samples = frechet_distance(out, data)
    fd_noise = frechet_distance(np.asarray(x_T), data)
    assert fd_samples < FD_50_STEPS_MAX, fd_samples
    assert fd_samples < fd_noise / 8, (fd_samples, fd_noise)


def test_builtin_digits_problem():
    p = builtin("digits")
    assert p.dim == 64
    x = p.x_T(jax.random.key(0), 6)
    out = p.denoiser(x, p.t_start)
    assert out.shape == (6, 64) and np.all(np.isfinite(np.asarray(out)))
    assert p.data.sample(jax.random.key(1), 5).shape == (5, 64)


def test_classifier_accuracy():
    acc = classifier_accuracy("test")
    assert acc > TEST_ACCURACY_MIN, acc


def test_frechet_distance_self_and_symmetry():
    data = digits_data().astype(np.float32)
    a, b = data[::2], data[1::2]
    assert abs(frechet_distance(a, a)) < 1e-8
    fd_ab, fd_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert fd_ab > 0
    np.testing.assert_allclose(fd_ab, fd_ba, rtol=1e-6)
    # raw pixels too (a 64x64 covariance with near-zero directions: constant border pixels).
    # An eigenvalue's rounding error e becomes sqrt(e) ~ 1e-8 in tr sqrt(.): rtol 1e-6.
    assert abs(frechet_distance(a, a, features=None)) < 1e-6
    np.testing.assert_allclose(frechet_distance(a, b, features=None),
                               frechet_distance(b, a, features=None), rtol=1e-6)


def test_frechet_distance_closed_form():
    # Commuting covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 (exact in a
    # rotated basis), including a singular covariance.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = np.array([4.0, 1.0, 0.25, 0.0, 2.0])
    b = np.array([1.0, 1.0, 1.0, 0.5, 0.0])
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance_from_stats(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    # the zero eigenvalues' rounding (~1e-16) enters as its square root
    np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_first_load_inside_jit_leaks_no_tracer():
    # The checkpoints are cached on first use; a first use inside a trace must not
    # cache that trace's values (it did: an UnexpectedTracerError on the next call).
    digits._denoiser_checkpoint.cache_clear()
    digits_features._classifier.cache_clear()
    problem = builtin("digits")
    x = jnp.zeros((2, 64))
    first = jax.jit(lambda x: problem.denoiser(x, 0.5) + digits_features.digits_features(x).sum())
    second = jax.jit(lambda x: problem.denoiser(x, 0.3) + digits_features.digits_features(x).sum())
    assert np.all(np.isfinite(np.asarray(first(x))))
    assert np.all(np.isfinite(np.asarray(second(x))))
