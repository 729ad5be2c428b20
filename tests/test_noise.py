"""Noise you can trust: Brownian noise across step counts, and the plan features the
stochastic and plug-in samplers add to the core (noise spans, per-coordinate
coefficients, constants)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convergence import problem
from stochastic_checks import run

from samplax import PlanBuilder
from samplax.schedules import VPLinear, uniform_logsnr
from samplax.solvers.ancestral import ddpm
from samplax.solvers.noise import BrownianNoise
from samplax.solvers.plan import constant, pad_plan, stack_plans
from samplax.solvers.sde_dpm_solver import sde_dpm_solver_pp

S = VPLinear()
BN = BrownianNoise.for_schedule(S)


def test_brownian_increments_are_standard_normal_and_independent():
    key = jax.random.key(0)
    spans = jnp.array([[0.2, 0.5], [0.5, 0.51], [0.0, 0.0]])
    z = jax.vmap(lambda sp: BN(key, sp, (4000, 2), jnp.float64))(spans)
    for i in range(2):
        assert abs(float(z[i].mean())) < 5 / np.sqrt(8000)
        assert abs(float(z[i].var()) - 1.0) < 5 * np.sqrt(2 / 8000)
    assert abs(float(np.corrcoef(z[0].ravel(), z[1].ravel())[0, 1])) < 5 / np.sqrt(8000)
    assert float(jnp.abs(z[2]).max()) == 0.0  # a slot without noise
    # a row's path does not depend on the batch size
    np.testing.assert_array_equal(BN(key, spans[0], (3, 2), jnp.float64), z[0, :3])


def test_same_key_gives_consistent_paths_across_step_counts():
    """With Brownian noise the SDE solutions converge pathwise as the steps are refined;
    with independent draws the samples for different step counts are unrelated."""
    schedule, data, x, _ = problem()
    den = data.denoiser(schedule)
    key = jax.random.key(3)
    brown = {}
    for n in (8, 16, 32):
        p = sde_dpm_solver_pp(S, uniform_logsnr(S, n), 2)
        assert p.noise_span.shape == (n + 1, 2)
        brown[n] = run(den, p, x, key, noise=BN)
    indep = {n: run(den, sde_dpm_solver_pp(S, uniform_logsnr(S, n), 2), x, key) for n in (16, 32)}
    eb = [np.median(np.abs(brown[n] - brown[32])) for n in (8, 16)]
    ei = np.median(np.abs(indep[16] - indep[32]))
    assert eb[1] < 0.6 * eb[0], eb
    assert eb[1] < 0.1 * ei, (eb, ei)


def test_brownian_rows_independent_of_batch_size():
    schedule, data, x, _ = problem()
    den = data.denoiser(schedule)
    p = ddpm(S, uniform_logsnr(S, 10))
    key = jax.random.key(1)
    a = run(den, p, x, key, noise=BN)
    np.testing.assert_allclose(run(den, p, x[:5], key, noise=BN), a[:5], rtol=0, atol=1e-13)
    assert not np.allclose(a, run(den, p, x, key))


def test_plan_records_spans_only_when_every_draw_has_one():
    ts = [1.0, 0.5, 0.1]
    b = PlanBuilder(S)
    for s, t in zip(ts[:-1], ts[1:]):
        out = b.evaluate(b.x, s)
        b.set_x(out.d * S.alpha(t) + b.noise(span=(t, s)) * S.sigma(t))
    p = b.build()
    np.testing.assert_allclose(p.noise_span, [[0.5, 1.0], [0.1, 0.5], [0.0, 0.0]])
    b = PlanBuilder(S)
    out = b.evaluate(b.x, 1.0)
    b.set_x(out.d + b.noise())
    assert b.build().noise_span is None


def test_per_coordinate_coefficients_and_constants():
    """A toy plan with per-coordinate weights and a constant, against a direct loop."""
    den = problem()[1].denoiser(S)
    x = jax.random.normal(jax.random.key(2), (5, 4))
    w = jnp.array([0.1, 0.2, 0.3, 0.4])
    c = jnp.array([1.0, -1.0, 0.5, 0.0])
    b = PlanBuilder(S)
    o1 = b.evaluate(b.x, 0.8)
    b.set_x(b.x * w + o1.d * (1.0 - w) + constant(c))
    o2 = b.evaluate(b.x * 0.5, 0.4)
    b.set_x(b.x + (o2.d - o1.d) * w + o2.e * 0.1)
    p = b.build()
    assert p.evaluate.x.shape == (2,) and p.update.x.shape == (2, 4) and p.update.c.shape == (2, 4)
    d1 = den(x, 0.8)
    x1 = x * w + d1 * (1.0 - w) + c
    xe = 0.5 * x1
    d2 = den(xe, 0.4)
    e2 = (xe - S.alpha(0.4) * d2) / S.sigma(0.4)
    expect = x1 + (d2 - d1) * w + 0.1 * e2
    np.testing.assert_allclose(run(den, p, x), expect, rtol=1e-12)
    np.testing.assert_allclose(run(den, pad_plan(p, 4, 3), x), expect, rtol=1e-12)


def test_noise_source_needs_spans():
    b = PlanBuilder(S)
    out = b.evaluate(b.x, 1.0)
    b.set_x(out.d + b.noise())
    den = problem()[1].denoiser(S)
    with pytest.raises(ValueError, match="span"):
        run(den, b.build(), jnp.ones((2, 4)), jax.random.key(0), noise=BN)


def test_vmap_over_stacked_stochastic_plans():
    schedule, data, x, _ = problem()
    den = data.denoiser(schedule)
    ts = uniform_logsnr(S, 16)
    plans = [sde_dpm_solver_pp(S, ts, 2, eta=e) for e in (0.3, 1.0)]
    key = jax.random.key(5)
    out = jax.vmap(lambda p: run(den, p, x, key, noise=BN))(stack_plans(plans))
    for i, p in enumerate(plans):
        np.testing.assert_allclose(out[i], run(den, p, x, key, noise=BN), rtol=0, atol=1e-12)
