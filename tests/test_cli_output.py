"""The command line's output: the time limit of the whole command, pictures, the
model's own quality measure, and progress."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from samplax.cli import main


def test_time_limit_bounds_the_whole_command(tmp_path):
    """``--time-limit`` is the command's wall time, teacher and baselines included: a
    search far too long for it (100 generations) stops within it plus the step under
    way and the report (a stated 90 s margin: the first generation, whose compilation
    dominates, takes 15-40 s on 2 idle cores; from an empty compilation cache the
    command took 93 s alone and 141 s beside the multi-process test of
    tests/test_devices.py; the 100 generations asked for would take many minutes),
    and lists the phases it skipped."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "samplax.cli", "search", "--model", "gauss64", "--nfe", "3",
           "--n-cal", "32", "--n-eval", "64", "--n-fit", "64", "--quiet", "--time-limit", "60",
           "--generations", "100", "--budget", "thorough", "--out", str(out)]
    t0 = time.time()
    done = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=300)
    wall = time.time() - t0
    assert done.returncode == 0, done.stderr
    assert wall < 60 + 90, wall
    res = json.loads(out.read_text())
    assert res["search"]["skipped"]["population"].startswith("time limit (about ")
    assert "skipped: coordinate_fit (time limit" in done.stdout


SAVED = str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"
            / "search_gmm64_nfe5.json")


def test_pictures_are_checked_before_sampling_and_drawn(tmp_path, capsys):
    """``compare --plot`` draws the error against NFE, ``sample --out x.png`` a grid of
    image-shaped samples or a scatter of 2-d ones; an unwritable picture fails before
    any sampling."""
    import matplotlib.image

    plot = tmp_path / "nfe.png"
    assert main(["compare", "--model", "gmm64", "--searched", SAVED, "--n", "32",
                 "--plot", str(plot)]) == 0
    assert f"plot -> {plot}" in capsys.readouterr().out
    h, w = matplotlib.image.imread(plot).shape[:2]
    assert h > 200 and w > 300
    for model, side in (("gauss64", 100), ("gmm2d", 200)):
        grid = tmp_path / f"{model}.png"
        assert main(["sample", "--model", model, "--n", "16", "--nfe", "4",
                     "--out", str(grid)]) == 0
        h, w = matplotlib.image.imread(grid).shape[:2]
        assert h > side and w > side, (model, h, w)
    t0 = time.perf_counter()
    for argv, match in [(["sample", "--out", str(tmp_path / "no" / "x.png")], "no directory"),
                        (["compare", "--plot", str(tmp_path / "x.jpg")], "must be a .png"),
                        (["sample", "--out", str(tmp_path / "x.txt")], ".npy or .png")]:
        with pytest.raises(SystemExit, match=match):
            main(argv + ["--model", "gmm64"])
    assert time.perf_counter() - t0 < 5  # refused before any sampling


def test_the_models_own_quality_measure_is_shown_beside_the_rmse(capsys):
    """Data with a ``quality`` measure (the digits' feature FD) gets it in every
    summary and a column in the comparison table."""
    from samplax.cli import _print_comparison
    from samplax.metrics import error_summary
    from samplax.models.digits import DigitsData, digits_data

    class Scored:
        def quality(self, x):
            return {"fd": float(np.sum(x))}

    s = error_summary(np.ones((3, 2)), np.zeros((3, 2)), Scored())
    assert s == {"median_rmse": 1.0, "mean_rmse": 1.0, "fd": 6.0}
    real = digits_data()[:200]
    assert DigitsData().quality(real)["fd"] < DigitsData().quality(real[:, ::-1])["fd"]
    row = lambda m, fd: {"median_rmse": m, "mean_rmse": 2 * m, "fd": fd}  # noqa: E731
    _print_comparison({"nfe": 5, "objective": {"heldout": row(0.01, 0.4)},
                       "baselines": {"a/b": row(0.03, 0.9), "best": row(0.03, 0.9)}})
    out = capsys.readouterr().out
    assert "| feature FD |" in out and "| searched | 0.01 | 0.02 | 0.400 |" in out


def test_progress_goes_to_stderr_as_plain_lines_off_a_terminal(capsys):
    assert main(["compare", "--model", "gauss64", "--nfe", "4", "--n", "16"]) == 0
    out, err = capsys.readouterr()
    assert "[teacher " in err and "24/24]" in err and "[baselines at NFE 4 " in err
    assert "[teacher" not in out and "| schedule |" in out  # the table stays clean
    assert main(["compare", "--model", "gauss64", "--nfe", "4", "--n", "16", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
