"""A search over many devices and processes: the network calls split along the noise
axis give the one-device result, for noise counts that do not divide the device count.

The multi-device runs happen in subprocesses: one whose CPU is split into 8 XLA devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, read when JAX starts), and two
that form one ``jax.distributed`` system on localhost (tests/multihost_search.py)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.search import noise_mesh, spread_denoiser

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def _run(script: str, env: dict, timeout=900) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_device_needs_no_mesh():
    assert noise_mesh(1) is None
    den = lambda x, t: x  # noqa: E731
    assert spread_denoiser(den, None) is den


def test_more_devices_than_visible_is_refused_with_the_cpu_flag():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
        noise_mesh(64)
    with pytest.raises(TypeError, match="devices must be"):
        noise_mesh("two")


SPREAD = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from samplax import dpm_solver_pp, sample
    from samplax.models import gaussian
    from samplax.schedules import VPLinear
    from samplax.search import noise_mesh, spread_denoiser
    S = VPLinear()
    data = gaussian(jnp.array([0.5, -0.3, 1.0]), jnp.array([0.3, 1.0, 0.6]) ** 2)
    den = data.denoiser(S)
    mesh = noise_mesh(8)
    spread = spread_denoiser(den, mesh)
    x = jax.random.normal(jax.random.key(0), (13, 3))
    plan = dpm_solver_pp(S, jnp.linspace(1.0, 1e-3, 6))
    one = sample(den, plan, x)
    many = jax.jit(lambda x: sample(spread, plan, x))(x)
    seen = []
    def probe(x, t):
        seen.append(x.shape)
        return den(x, t)
    jax.jit(lambda x: spread_denoiser(probe, mesh)(x, 0.5))(x)
    print(json.dumps({"devices": len(jax.devices()), "mesh": mesh.size,
                      "diff": float(jnp.max(jnp.abs(one - many))), "shape": list(many.shape),
                      "model_batch": list(seen[0]), "schedule": spread.schedule is S}))
"""


def test_a_spread_denoiser_pads_splits_and_drops_the_padding():
    out = _run(SPREAD, EIGHT)
    assert out["devices"] == 8 and out["mesh"] == 8
    assert out["shape"] == [13, 3]
    assert out["model_batch"] == [16, 3]  # 13 noises padded to a multiple of 8
    assert out["diff"] < 1e-14
    assert out["schedule"]


SCRIPT = pathlib.Path(__file__).with_name("multihost_search.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _search(out, env=None, processes=1, port=0):
    """Start the search of tests/multihost_search.py as ``processes`` processes."""
    cmd = [sys.executable, str(SCRIPT), str(out)]
    if processes > 1:
        cmd += ["--processes", str(processes), "--port", str(port)]
    return [subprocess.Popen(cmd + (["--process-id", str(i)] if processes > 1 else []),
                             env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(processes)]


def _results(out, procs):
    for p in procs:
        log, _ = p.communicate(timeout=900)
        assert p.returncode == 0, log[-3000:]
    return [json.loads(pathlib.Path(f"{out}.{i}.json").read_text()) for i in range(len(procs))]


def test_search_on_eight_devices_and_on_two_processes_equals_one(tmp_path):
    """The same search on 1 device, on 8 devices of one process, and on 2 processes
    under jax.distributed (CPU collectives over localhost, one device each): the
    teacher's samples agree to 1e-13, the searched times to 1e-10, the held-out
    error to the reductions' rounding (it is about 1e-3 here)."""
    # one after another: the two processes of the distributed run are enough load for
    # a 2-core machine that runs another test file beside this one
    [one] = _results(tmp_path / "one", _search(tmp_path / "one"))
    [eight] = _results(tmp_path / "eight", _search(tmp_path / "eight", EIGHT))
    procs = _results(tmp_path / "multi", _search(tmp_path / "multi", processes=2,
                                                 port=_free_port()))
    assert one["devices"] == 1 and eight["devices"] == 8
    assert [p["processes"] for p in procs] == [2, 2] and procs[0]["devices"] == 2
    # one checkpoint, written by process 0
    assert (tmp_path / "multi.ckpt.json").exists()
    for other in (eight, *procs):
        np.testing.assert_allclose(other["ref"], one["ref"], rtol=0, atol=1e-13)
        np.testing.assert_allclose(other["timesteps"], one["timesteps"], rtol=1e-10)
        np.testing.assert_allclose(other["heldout"], one["heldout"], rtol=1e-8)


def test_cli_devices_beyond_the_started_backend_is_a_message(monkeypatch, capsys):
    from samplax import cli

    # the flag already set: the command must not change this process's environment
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    jax.devices()  # the backend of this process is started with its devices
    with pytest.raises(SystemExit, match="--devices: devices=64"):
        cli._mesh(64)
    assert jnp.ones(1).shape == (1,)
