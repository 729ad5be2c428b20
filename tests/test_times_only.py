"""Times-only search of a named solver, its result file, and its export as sigmas that
diffusers and ComfyUI run exactly."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import gaussian
from samplax.schedules import DiscreteVP, VPLinear
from samplax.search import (
    ResultError,
    atomic_write_json,
    load_plan,
    load_result,
    make_teacher,
    search_times,
)
from samplax.search.export import ExportError, export_schedule
from samplax.search.result import resize_result
from samplax.solvers import get_solver, sample

S = VPLinear()
T0, T1 = 1.0, 1e-3
DATA = gaussian(jnp.array([0.5, -0.3, 1.0]), jnp.array([0.3, 1.0, 0.6]) ** 2)


@pytest.fixture(scope="module")
def teacher():
    den = DATA.denoiser(S)
    return den, make_teacher(den, S, lambda k, n: jax.random.normal(k, (n, 3)), T0, T1,
                             n_cal=16, n_eval=32)


@pytest.fixture(scope="module")
def euler_result(teacher, tmp_path_factory):
    den, t = teacher
    res = search_times(den, S, "euler", 4, t, t_start=T0, t_end=T1, iters=60)
    path = tmp_path_factory.mktemp("times") / "euler.json"
    atomic_write_json(path, res)
    return res, path


def test_times_only_search_improves_its_start_and_loads_as_the_solver(teacher, euler_result):
    den, t = teacher
    res, path = euler_result
    rec = res["search"]["times_only"]
    assert rec["loss"] < rec["loss_before"] == min(rec["start_losses"].values())
    obj = load_result(path)
    plan = load_plan(path, S)
    ts = jnp.asarray(res["timesteps"])
    assert plan.nfe == 4 and np.allclose(plan.t, get_solver("euler").build(S, ts).t)
    # the held-out figure is the loaded plan's
    out = sample(den, plan, t.x_eval)
    rmse = np.sqrt(np.mean((np.asarray(out) - np.asarray(t.ref_eval)) ** 2, axis=-1))
    assert np.isclose(np.median(rmse), res["objective"]["heldout"]["median_rmse"], rtol=1e-9)
    # moved to another budget, it stays the same solver with fixed ends
    six = resize_result(obj, 6, S)
    assert six["solver"] == "euler" and len(six["timesteps"]) == 7
    assert six["timesteps"][0] == T0 and six["timesteps"][-1] == T1


def test_a_times_only_file_is_validated(euler_result, tmp_path):
    res, _ = euler_result
    for change, match in ((dict(solver="nope"), "not a registered solver"),
                          (dict(nfe=9), "do not cost"),
                          (dict(timesteps=[1.0]), "at least 2"),
                          (dict(steps=[]), "either")):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps({**res, **change}))
        with pytest.raises(ResultError, match=match):
            load_result(p)


def _k_diffusion_euler(den, sigmas, x_T):
    """k-diffusion's ``sample_euler`` (diffusers' EulerDiscreteScheduler on given
    sigmas) on a VP model: state ``x/alpha``, network at the time of each sigma."""
    x = np.asarray(x_T) * np.sqrt(1.0 + sigmas[0] ** 2)  # x / alpha
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = S.t_of_lam(jnp.asarray(-np.log(s)))
        denoised = np.asarray(den(jnp.asarray(x / np.sqrt(1.0 + s ** 2)), t))
        x = x + (s_next - s) * (x - denoised) / s
    return x / np.sqrt(1.0 + sigmas[-1] ** 2)


def test_the_exported_sigmas_run_in_the_tools_euler_give_the_searched_samples(
        teacher, euler_result):
    den, t = teacher
    res, path = euler_result
    for fmt in ("diffusers", "comfyui"):
        out = export_schedule(load_result(path), S, fmt)
        assert out["solver"] == "euler" and "usage" in out
        sigmas = np.asarray(out["sigmas"])
        assert np.all(np.diff(sigmas) < 0) and len(sigmas) == 5
        tool = _k_diffusion_euler(den, sigmas, t.x_eval)
        ours = np.asarray(sample(den, load_plan(path, S), t.x_eval))
        np.testing.assert_allclose(tool, ours, rtol=1e-9, atol=1e-10)
    assert export_schedule(load_result(path), S, "diffusers")["scheduler"] == \
        "EulerDiscreteScheduler"
    assert export_schedule(load_result(path), S, "comfyui")["sampler_name"] == "euler"


def test_export_refuses_what_no_tool_runs_exactly(teacher, euler_result, tmp_path):
    den, t = teacher
    res, _ = euler_result
    two_m = search_times(den, S, "dpm_solver_pp_2m", 4, t, t_start=T0, t_end=T1, iters=2)
    p = tmp_path / "2m.json"
    atomic_write_json(p, two_m)
    with pytest.raises(ExportError, match="cannot be run exactly by comfyui"):
        export_schedule(load_result(p), S, "comfyui")
    assert export_schedule(load_result(p), S, "json")["times"] == two_m["timesteps"]
    full = {k: v for k, v in res.items() if k != "solver"}
    with pytest.raises(ExportError, match="full searched plan"):
        export_schedule(full, S, "diffusers")
    with pytest.raises(ExportError, match="unknown format"):
        export_schedule(res, S, "a1111")


def test_a_discrete_schedule_exports_its_training_labels(euler_result):
    res, _ = euler_result
    D = DiscreteVP.linear()
    ts = np.array([1.0, 0.5, 0.1, 0.01])
    out = export_schedule(dict(res, timesteps=ts.tolist(), nfe=3), D, "json")
    np.testing.assert_allclose(out["timesteps"], 1000 * ts - 1, atol=1e-9)
    alpha, sigma = np.asarray(D.alpha(jnp.asarray(ts))), np.asarray(D.sigma(jnp.asarray(ts)))
    np.testing.assert_allclose(out["sigmas"], sigma / alpha, rtol=1e-12)


def test_cli_times_only_search_and_export(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "samplax", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=tmp_path, timeout=600)
    r = run("search", "--model", "gmm64", "--nfe", "4", "--solver", "euler", "--times-only",
            "--n-cal", "16", "--n-eval", "16", "--quiet", "--out", "e.json")
    assert r.returncode == 0, r.stderr
    assert "euler, searched times" in r.stdout
    r = run("export", "e.json", "--format", "comfyui", "--out", "e.comfy.json")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "e.comfy.json").read_text())
    assert out["sampler_name"] == "euler" and len(out["sigmas"]) == 5
    bad = run("search", "--model", "gmm64", "--nfe", "4", "--times-only", "--out", "x.json")
    assert bad.returncode != 0 and "--times-only and --solver NAME go together" in bad.stderr
