"""Plans run in a basis (Plan.basis, samplax.search.basis): the same samples for
scalar coefficients in any basis, per-coordinate coefficients acting on the basis's
coordinates, exact solutions of Gaussian data in its principal components that the
sample's own coordinates cannot reach, bad bases refused, and bases saved and
reloaded exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import sample
from samplax.models import gaussian
from samplax.schedules import VPLinear, kl_optimal
from samplax.search import ResultError, SearchConfig, make_teacher
from samplax.search.basis import (
    coordinate_shape,
    pca_basis,
    pca_start,
    resolved,
    start_in,
    with_basis,
)
from samplax.search.coordinate_fit import fit_coordinates, per_coordinate
from samplax.search.output_fit import fit_output, fit_output_in
from samplax.search.result import tuned_plan_to_json, with_tuned_plan
from samplax.solvers import ddim, dpm_solver_pp
from samplax.solvers.plan import pad_plan, stack_plans

S = VPLinear()
T0, T1 = 1.0, 1e-3


def _orthogonal(n, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


@pytest.fixture(scope="module")
def rotated():
    """4-d Gaussian data whose principal axes are not the coordinate axes."""
    U = _orthogonal(4, 0)
    cov = U @ np.diag(np.array([1.0, 0.5, 0.1, 0.02]) ** 2) @ U.T
    data = gaussian(jnp.array([0.5, -0.3, 0.0, 1.0]), jnp.asarray(cov))
    den = data.denoiser(S)
    teacher = make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, 4)), T0, T1,
                           n_cal=64, n_eval=64, n_fit=64)
    return U, den, teacher


def test_pca_basis_is_orthogonal_ordered_and_recovers_the_principal_axes():
    U = _orthogonal(5, 1)
    sd = np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    x = np.random.default_rng(2).normal(size=(20000, 5)) * sd @ U.T + 7.0
    B = pca_basis(x.reshape(20000, 5, 1))  # trailing axes are flattened
    np.testing.assert_allclose(B.T @ B, np.eye(5), atol=1e-12)
    var = np.var((x - x.mean(0)) @ B, axis=0)
    assert np.all(np.diff(var) < 0)
    np.testing.assert_allclose(np.abs(B.T @ U), np.eye(5), atol=0.03)
    assert np.all(B[np.argmax(np.abs(B), axis=0), np.arange(5)] > 0)
    np.testing.assert_array_equal(B, pca_basis(x))
    with pytest.raises(ValueError, match="at least 2 samples"):
        pca_basis(x[:1])
    with pytest.raises(ValueError, match="non-finite"):
        pca_basis(np.where(x == x[0, 0], np.nan, x))


def test_scalar_plans_give_the_same_samples_in_any_basis(rotated):
    _, den, teacher = rotated
    plan = dpm_solver_pp(S, kl_optimal(S, 4, t_start=T0, t_end=T1), order=2)
    x = teacher.x_cal
    ref = sample(den, plan, x)
    out, traj = sample(den, with_basis(plan, _orthogonal(4, 3)), x, return_trajectory=True)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(traj, sample(den, plan, x, return_trajectory=True)[1],
                               atol=1e-12)
    # samples with several trailing axes: the basis acts on the shortest ones that hold
    # its n entries, here the last two of [n, 1, 2, 2]
    den4 = lambda y, t: den(y.reshape(-1, 4), t).reshape(y.shape)  # noqa: E731
    x4 = x.reshape(-1, 1, 2, 2)
    out4 = sample(den4, with_basis(plan, _orthogonal(4, 3)), x4)
    assert out4.shape == x4.shape
    np.testing.assert_allclose(out4.reshape(-1, 4), ref, atol=1e-12)


def test_per_coordinate_coefficients_act_on_the_basis_coordinates(rotated):
    _, den, teacher = rotated
    U = jnp.asarray(_orthogonal(4, 4))
    plan = per_coordinate(dpm_solver_pp(S, kl_optimal(S, 3, t_start=T0, t_end=T1),
                                        order=2), (4,))
    w = jnp.array([1.0, 0.9, 1.2, 0.7])
    plan = plan._replace(update=plan.update._replace(x=plan.update.x * w),
                         final=plan.final._replace(c=jnp.array([0.1, 0.0, -0.2, 0.3])))
    x = teacher.x_cal
    by_hand = sample(lambda z, t: den(z @ U.T, t) @ U, plan, x @ U) @ U.T
    np.testing.assert_allclose(sample(den, plan._replace(basis=U), x), by_hand, atol=1e-12)
    assert not np.allclose(sample(den, plan, x), by_hand, atol=1e-3)


def test_padding_and_stacking_keep_the_basis(rotated):
    """``pad_plan`` and ``stack_plans`` (the executor's batch of plans) carry a plan's
    basis: padded and vmapped basis plans give each plan's own samples."""
    _, den, teacher = rotated
    U, V = jnp.asarray(_orthogonal(4, 5)), jnp.asarray(_orthogonal(4, 6))
    ts = kl_optimal(S, 3, t_start=T0, t_end=T1)
    a = per_coordinate(dpm_solver_pp(S, ts, order=2), (4,))
    a = a._replace(final=a.final._replace(x=a.final.x * jnp.array([1.0, 0.9, 1.1, 0.8])))
    b = per_coordinate(ddim(S, ts), (4,))
    a, b = a._replace(basis=U), b._replace(basis=V)
    x = teacher.x_cal
    padded = pad_plan(a, 4, 3)
    np.testing.assert_array_equal(padded.basis, U)
    np.testing.assert_allclose(sample(den, padded, x), sample(den, a, x), atol=1e-12)
    both = jax.vmap(lambda p: sample(den, p, x))(stack_plans([a, b]))
    np.testing.assert_allclose(both[0], sample(den, a, x), atol=1e-12)
    np.testing.assert_allclose(both[1], sample(den, b, x), atol=1e-12)
    with pytest.raises(ValueError, match="with a basis and plans without"):
        stack_plans([a, b._replace(basis=None)])


def test_gaussian_data_is_solved_exactly_in_its_principal_components(rotated):
    """The PF-ODE of Gaussian data decouples along its principal axes: there DDIM's
    anchor is, per coordinate, affine in the noise like the exact solution, so a
    per-coordinate output reproduces the teacher; per pixel it cannot."""
    U, den, teacher = rotated
    plan = ddim(S, kl_optimal(S, 2, t_start=T0, t_end=T1))
    x, ref = teacher.x_cal, teacher.ref_cal
    in_basis, _, _, ok = fit_output(den, with_basis(plan, U), x, ref, loss="mean_rmse",
                                    ridge=0.0)
    per_pixel, _, _, ok_pixel = fit_output(den, plan, x, ref, loss="mean_rmse", ridge=0.0)
    assert ok and ok_pixel
    err = lambda q: float(jnp.max(jnp.abs(sample(den, q, teacher.x_eval)  # noqa: E731
                                          - teacher.ref_eval)))
    assert err(in_basis) < 1e-7
    assert err(per_pixel) > 1e-3
    assert in_basis.final.x.shape == (4,) and in_basis.basis.shape == (4, 4)


def test_a_basis_plan_keeps_float32_samples_float32_and_finite(rotated):
    """A plan fitted in float64 (basis, per-coordinate output, offset) run from
    float32 noise: the state stays float32 through the rotations, and the result is
    the float64 one to float32 precision, down to t_end = 1e-5."""
    U, den, teacher = rotated
    plan = ddim(S, kl_optimal(S, 3, t_start=T0, t_end=1e-5))
    fitted, _, _, ok = fit_output(den, with_basis(plan, U), teacher.x_cal, teacher.ref_cal,
                                  loss="mean_rmse")
    assert ok and fitted.final.c is not None
    x32 = teacher.x_eval.astype(jnp.float32)
    out, traj = sample(den, fitted, x32, return_trajectory=True)
    assert out.dtype == jnp.float32 and traj.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(traj)))
    ref = sample(den, fitted, x32.astype(jnp.float64))
    np.testing.assert_allclose(out, ref, atol=2e-5 * float(jnp.max(jnp.abs(ref))))


def test_auto_keeps_the_basis_whose_output_fit_is_better(rotated):
    """"auto" fits the output in both coordinate systems and keeps the lower loss:
    the principal components for rotated Gaussian data, the sample's own coordinates
    for axis-aligned data (where the estimated principal axes are slightly off)."""
    _, den, teacher = rotated
    plan = ddim(S, kl_optimal(S, 2, t_start=T0, t_end=T1))
    fitted, rec = fit_output_in(den, plan, teacher, basis="auto", loss="mean_rmse")
    assert rec["basis"] == "pca" and rec["applied"]
    assert rec["loss_by_basis"]["pca"] < rec["loss_by_basis"]["none"]
    assert rec["loss"] == rec["loss_by_basis"]["pca"] and fitted.basis is not None
    only, rec_pca = fit_output_in(den, plan, teacher, basis="pca", loss="mean_rmse")
    assert rec_pca["loss"] == rec["loss"] and "loss_by_basis" not in rec_pca
    np.testing.assert_array_equal(only.final.x, fitted.final.x)

    axis = gaussian(jnp.array([0.5, -0.3, 0.0, 1.0]), jnp.diag(jnp.array([1.0, 0.3, 0.1,
                                                                          0.02]) ** 2))
    aden = axis.denoiser(S)
    ateacher = make_teacher(aden, S, lambda k, n: jax.random.normal(k, (n, 4)), T0, T1,
                            n_cal=64, n_eval=8, n_fit=64)
    pixel, arec = fit_output_in(aden, plan, ateacher, basis="auto", loss="mean_rmse")
    assert arec["basis"] == "none" and pixel.basis is None
    assert arec["loss_by_basis"]["none"] < arec["loss_by_basis"]["pca"]
    # the per-coordinate fit of the slots then uses the output fit's choice
    assert resolved("auto", arec) == "none" and resolved("auto", rec) == "pca"
    assert resolved("auto", None) == "pca" and resolved("none", rec) == "none"
    # a sample too large for a basis: one fit, in its own coordinates
    big, brec = fit_output_in(den, plan, teacher, basis="auto", loss="mean_rmse", max_dim=3)
    assert brec["basis"] == "none" and list(brec["loss_by_basis"]) == ["none"]
    assert big.basis is None and brec["loss"] == rec["loss_by_basis"]["none"]
    with pytest.raises(ValueError, match="unknown basis"):
        fit_output_in(den, plan, teacher, basis="dct")
    with pytest.raises(ValueError, match="unknown basis"):
        resolved("dct", None)
    with pytest.raises(ValueError, match="unknown basis"):
        start_in(plan, teacher, "auto")


def test_pca_start_uses_only_calibration_and_fitting_samples(rotated):
    _, den, teacher = rotated
    plan = dpm_solver_pp(S, kl_optimal(S, 3, t_start=T0, t_end=T1), order=2)
    start = pca_start(plan, teacher)
    np.testing.assert_array_equal(
        start.basis, pca_basis(np.concatenate([teacher.ref_cal, teacher.ref_fit])))
    assert pca_start(start, teacher) is start  # a basis is kept
    assert pca_start(plan, teacher, max_dim=3) is plan  # too large a sample
    wide = per_coordinate(plan, (4,))
    assert pca_start(wide, teacher) is wide  # coefficients bound to their coordinates
    assert coordinate_shape(start, (2, 2)) == (4,) and coordinate_shape(plan, (2, 2)) == (2, 2)


def test_the_coordinate_fit_works_in_the_basis(rotated):
    U, den, teacher = rotated
    plan = with_basis(ddim(S, kl_optimal(S, 2, t_start=T0, t_end=T1)), U)
    x = jnp.concatenate([teacher.x_cal, teacher.x_fit])
    ref = jnp.concatenate([teacher.ref_cal, teacher.ref_fit])
    fitted, before, after, applied = fit_coordinates(den, plan, x, ref, iters=100, lr=3e-3,
                                                     loss="mean_rmse")
    assert applied and after < before
    assert fitted.update.x.shape == (2, 4)
    np.testing.assert_array_equal(fitted.basis, plan.basis)


def test_bad_bases_are_refused(rotated):
    _, den, teacher = rotated
    plan = dpm_solver_pp(S, kl_optimal(S, 3, t_start=T0, t_end=T1), order=2)
    with pytest.raises(ValueError, match="orthogonal"):
        with_basis(plan, np.diag([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="square"):
        with_basis(plan, np.eye(4)[:3])
    with pytest.raises(ValueError, match="per-coordinate already"):
        with_basis(per_coordinate(plan, (4,)), np.eye(4))
    with pytest.raises(ValueError, match="no trailing axes"):
        sample(den, with_basis(plan, np.eye(3)), teacher.x_cal)
    class Hook:  # a valid SlotHook, which a plan with a basis refuses
        def init(self, x_T):
            return None

        def __call__(self, state, k, t, x, D, E, d, key):
            return state, x, D, E

    with pytest.raises(ValueError, match="slot hook"):
        sample(den, with_basis(plan, np.eye(4)), teacher.x_cal, jax.random.key(0),
               hook=Hook())
    with pytest.raises(TypeError, match="hook must be a SlotHook"):
        sample(den, plan, teacher.x_cal, jax.random.key(0), hook=lambda *a: a)
    with pytest.raises(ValueError, match="unknown basis"):
        SearchConfig().set(output_fit=dict(basis="dct"), coordinate_fit=dict(basis="dct"))


def test_bases_round_trip_through_json_and_corrupt_ones_are_rejected(rotated):
    U, den, teacher = rotated
    plan = dpm_solver_pp(S, kl_optimal(S, 3, t_start=T0, t_end=T1), order=2)
    fitted, *_ = fit_output(den, with_basis(plan, U), teacher.x_cal, teacher.ref_cal)
    js = tuned_plan_to_json(fitted)
    back = with_tuned_plan(plan, js)
    np.testing.assert_array_equal(back.basis, U)
    np.testing.assert_array_equal(sample(den, back, teacher.x_eval),
                                  sample(den, fitted, teacher.x_eval))
    bad = dict(js, basis=(2.0 * U).tolist())
    with pytest.raises(ResultError, match="orthogonal"):
        with_tuned_plan(plan, bad)
    with pytest.raises(ResultError, match="square"):
        with_tuned_plan(plan, dict(js, basis=U[:3].tolist()))
    with pytest.raises(ResultError, match="basis has 3 coordinates"):
        with_tuned_plan(plan, dict(js, basis=np.eye(3).tolist()))
    with pytest.raises(ResultError, match="optionally basis"):
        with_tuned_plan(plan, dict(js, rotation=U.tolist()))
