"""The command line: search (with interrupt and --resume), sample, compare, solvers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from samplax.cli import main

# small enough for a test: one structure per generation count, few calibration noises
SMALL = ["--model", "gauss64", "--nfe", "3", "--n-cal", "16", "--n-eval", "32",
         "--n-fit", "48", "--set", "coordinate_fit.iters=10",
         "--population", "6", "--quiet", "--set", "population.refine_iters=5",
         "--set", "refine.iters=20", "--set", "polish.iters=0", "--set", "plan_fit.iters=10",
         "--set", "space.afs=[true]", "--set", "refine.finalists=1",
         "--set", "population.elites=1"]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """``samplax search`` killed (SIGTERM) after its first checkpoint, then resumed."""
    d = tmp_path_factory.mktemp("cli")
    out, ck = d / "s.json", d / "s.ckpt.json"
    cmd = [sys.executable, "-m", "samplax.cli", "search", *SMALL, "--generations", "3",
           "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    killed = {"alive": alive, "rc": proc.returncode, "stderr": err, "out_exists": out.exists(),
              "checkpoint": json.loads(ck.read_text())}
    # resumed on two devices: the checkpoint does not depend on the device count
    resumed = subprocess.run(cmd + ["--resume", "--devices", "2"], env=env,
                             capture_output=True, text=True, timeout=600)
    return out, killed, resumed


@pytest.fixture(scope="module")
def searched(killed_and_resumed):
    out, _, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr
    return out


def test_kill_keeps_finished_generations_and_resume_finishes(killed_and_resumed):
    out, killed, resumed = killed_and_resumed
    assert killed["alive"], "the search ended before its first checkpoint could be killed"
    assert killed["rc"] == 130, killed["stderr"]
    assert "--resume" in killed["stderr"] and not killed["out_exists"]
    gens = [s["generation"] for s in killed["checkpoint"]["structures"].values()]
    assert sum(gens) >= 1  # finished generations survive the kill
    assert resumed.returncode == 0, resumed.stderr
    assert "saved" in resumed.stdout
    assert "devices: 2 (cpu)" in resumed.stdout
    assert json.loads(out.read_text())["devices"] == 2


def test_search_writes_a_result_of_the_budget(searched, capsys):
    res = json.loads(searched.read_text())
    assert res["nfe"] == 3 and res["model"] == "gauss64"
    assert res["objective"]["heldout"]["median_rmse"] < res["baselines"]["best"]["median_rmse"]
    # the per-coordinate fit ran last, on the calibration and fitting noises
    assert res["search"]["coordinate_fit"]["n_noises"] == 16 + 48
    # the finished search removed its checkpoint; a rerun says where the result is
    assert not searched.with_suffix(".ckpt.json").exists()
    assert main(["search", *SMALL, "--generations", "1", "--out", str(searched)]) == 0
    assert f"{searched} holds a finished search (NFE 3" in capsys.readouterr().out
    assert json.loads(searched.read_text()) == res  # untouched
    # an unfinished checkpoint beside it is refused unless resumed or forced
    ckpt = searched.with_suffix(".ckpt.json")
    ckpt.write_text("{}")
    with pytest.raises(SystemExit, match="--resume to continue it, or --force"):
        main(["search", *SMALL, "--generations", "1", "--out", str(searched)])
    ckpt.unlink()


def test_sample_with_a_searched_schedule(searched, tmp_path, capsys):
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "gauss64", "--schedule", str(searched), "--n", "5",
                 "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (5, 64) and np.all(np.isfinite(x))
    assert "3 NFE" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=".npy or .png"):
        main(["sample", "--model", "gauss64", "--nfe", "4", "--out", str(tmp_path / "x.txt")])


def test_compare_uses_the_searched_budget(searched, capsys):
    assert main(["compare", "--model", "gauss64", "--searched", str(searched), "--n", "32"]) == 0
    out = capsys.readouterr().out
    assert "NFE 3 " in out and "| searched |" in out
    assert "| wrong component |" in out and "nan" not in out
    assert main(["compare", "--model", "gauss64", "--searched", str(searched), "--n", "32",
                 "--nfe", "4"]) == 0  # resized to 4
    assert "NFE 4 " in capsys.readouterr().out


def test_bad_config_overrides_are_refused(tmp_path, capsys):
    base = ["search", "--model", "gauss64", "--nfe", "3", "--out", str(tmp_path / "r.json")]
    for bad, match in [("nope=1", "no such setting"), ("final_iters", "KEY=VALUE"),
                       ("final_iters=ten", "JSON"), ("final_iters=0.5", "takes a int"),
                       ("plan_method=newton", "plan_fit: unknown method 'newton'"),
                       ("plan_loss=3", "takes a str"), ("basis=dct", "unknown basis 'dct'"),
                       ("refine.nope=1", "Refine has no setting 'nope'"),
                       ("nophase.iters=1", "no phase 'nophase'"),
                       ("refine.name=x", "name cannot be set"),
                       ("space.afs=3", "takes a tuple")]:
        with pytest.raises(SystemExit, match=match):
            main(base + ["--set", bad])
    with pytest.raises(SystemExit, match="--budget: unknown budget 'huge'"):
        main(base + ["--budget=huge"])
    # numbers are checked by argparse: exit code 2, the option named on stderr
    for flag, match in [("--n-fit=-1", "argument --n-fit: must be an integer >= 0, got -1"),
                        ("--n-cal=0", "argument --n-cal: must be an integer >= 1, got 0"),
                        ("--nfe=2.5", "argument --nfe: must be an integer, got '2.5'"),
                        ("--time-limit=nan", "argument --time-limit: must be a finite"),
                        ("--max-evals=1e6", "argument --max-evals: must be an integer")]:
        with pytest.raises(SystemExit) as exit_:
            main(base + [flag])
        assert exit_.value.code == 2
        assert match in capsys.readouterr().err


def test_config_overrides_take_bare_words_and_old_flat_names(capsys):
    import argparse

    from samplax.cli import _search_config

    args = argparse.Namespace(seed=3, population=None, generations=5, n_fit=None,
                              set=["basis=none", "plan_fit.method=adam", "lr=0.1"])
    config = _search_config(args)
    assert config.phase("population").size == 48  # no budget: SearchConfig()'s
    from samplax.search.budgets import BUDGETS

    fast = _search_config(argparse.Namespace(**vars(args), budget_preset=BUDGETS["fast"]))
    # the budget's mix first, then the flags and --set on top
    assert fast.phase("population").size == 16 and fast.phase("population").generations == 5
    assert config.phase("output_fit").basis == config.phase("coordinate_fit").basis == "none"
    assert config.phase("plan_fit").method == "adam" and config.seed == 3
    assert config.phase("population").generations == 5
    # the old flat lr set the population's rate and the finalists' (1/2, 1/5 -> 1/100)
    assert (config.phase("population").lr, config.phase("refine").lr,
            config.phase("polish").lr, config.phase("polish").lr_end) == (0.1, 0.05, 0.02,
                                                                          0.001)
    err = capsys.readouterr().err
    assert "--set basis: " in err and "deprecated" in err and "output_fit.basis" in err


def test_comparison_table_without_mixture_components(capsys):
    """Data without components (digits) gets no wrong-component column (it printed nan)."""
    from samplax.cli import _print_comparison

    summary = lambda m: {"median_rmse": m, "mean_rmse": 2 * m}  # noqa: E731
    _print_comparison({"nfe": 4, "objective": {"heldout": summary(0.01)},
                       "baselines": {"a/b": summary(0.03), "best": summary(0.03)}})
    out = capsys.readouterr().out
    assert "nan" not in out and "wrong component" not in out
    assert "| searched | 0.01 | 0.02 |" in out and "| a/b | 0.03 | 0.06 |" in out


def test_unknown_model_and_solvers_listing(capsys):
    with pytest.raises(SystemExit, match="unknown model"):
        main(["sample", "--model", "nope", "--out", "x.npy"])
    assert main(["solvers"]) == 0
    assert "dpm_solver_pp_2m" in capsys.readouterr().out


def test_module_function_models_resolve_from_the_current_directory(tmp_path, monkeypatch,
                                                                    capsys):
    (tmp_path / "mymodels.py").write_text(
        "from samplax.models.builtin import builtin\n"
        "def problem():\n    return builtin('gauss64')\n"
        "def wrong():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "mymodels:problem", "--n", "3", "--nfe", "4",
                 "--out", str(out)]) == 0
    assert np.load(out).shape == (3, 64)
    for spec, match in [("nomodule:problem", "no module 'nomodule' in the current directory"),
                        ("mymodels:nope", "has no attribute 'nope'"),
                        ("mymodels:wrong", "gave a int; it must return a samplax.models"),
                        ("mymodels:", "expected module:function")]:
        with pytest.raises(SystemExit, match=match):
            main(["sample", "--model", spec, "--out", str(out)])


def test_version_help_and_solver_names(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("samplax 0.")
    with pytest.raises(SystemExit, match="unknown solver 'unipc'; choose one of .*unipc_bh2_3"):
        main(["sample", "--solver", "unipc", "--out", "x.npy"])
    with pytest.raises(SystemExit, match="unknown step schedule 'fast'"):
        main(["sample", "--steps", "fast", "--out", "x.npy"])
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert "gauss64" in text and "digits" in text  # --model lists the built-ins
    for flag in ("--time-limit", "--resume", "--force", "--n-cal", "--set"):
        assert flag in text
