"""Command line: ``samplax search | sample | compare | solvers``.

Models are built-in names (``gmm2d``, ``gmm64``, ``gauss64``, ``digits``) or
``module:function`` returning a :class:`samplax.models.builtin.Problem` (schedule,
denoiser data model, ``t_start``, ``t_end``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys
import time
from pathlib import Path


def _setup_jax(precision: str = "float64"):
    import jax

    # Search and references are float64 computations (DESIGN: exactness in x64);
    # --precision float32 runs as on a device without float64: the built-in models,
    # the noises and the teacher in float32 (samplax.models.reference.RTOL).
    jax.config.update("jax_enable_x64", precision == "float64")


def _resolve(spec: str, what: str):
    """The object ``module:attribute`` names; the module is found on ``sys.path`` and,
    as ``python -m`` does, in the current directory."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise SystemExit(f"{what} {spec!r}: expected module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod.split(".")[0] and e.name != mod:
            raise SystemExit(f"{what} {spec!r}: importing module {mod!r} failed: {e}") from None
        raise SystemExit(f"{what} {spec!r}: no module {mod!r} in the current directory "
                         f"({Path.cwd()}) or on sys.path") from None
    except ImportError as e:
        raise SystemExit(f"{what} {spec!r}: importing module {mod!r} failed: {e}") from None
    if not hasattr(module, attr):
        raise SystemExit(f"{what} {spec!r}: module {mod!r} ({module.__file__}) has no "
                         f"attribute {attr!r}")
    return getattr(module, attr)


def _integer(least: int, most: int | None = None):
    """An argparse type: an integer in ``[least, most]`` (exit code 2 otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < least or (most is not None and value > most):
            rng = f">= {least}" if most is None else f"in {least}..{most:,}"
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def load_problem(spec: str):
    """A built-in problem by name, or ``module:function`` that returns one."""
    from samplax.models.builtin import Problem, builtin, builtin_problems

    if ":" in spec:
        obj = _resolve(spec, "--model")
        obj = obj() if callable(obj) and not isinstance(obj, Problem) else obj
        if not isinstance(obj, Problem):
            raise SystemExit(f"--model {spec!r} gave a {type(obj).__name__}; it must return "
                             "a samplax.models.builtin.Problem(name, schedule, data, t_start, "
                             "t_end)")
        return obj
    if spec not in builtin_problems():
        raise SystemExit(f"unknown model {spec!r}: use one of {builtin_problems()} or "
                         "module:function")
    return builtin(spec)


def load_metric(spec: str | None):
    """A search metric by name (:data:`samplax.search.objective.METRICS`), or
    ``module:function`` giving ``fn(samples, ref) -> scalar``."""
    from samplax.search.objective import METRICS

    if spec is None or ":" not in spec:
        if spec is not None and spec not in METRICS:
            raise SystemExit(f"unknown metric {spec!r}: use one of {sorted(METRICS)} or "
                             "module:function")
        return spec
    obj = _resolve(spec, "--metric")
    if not callable(obj):
        raise SystemExit(f"metric {spec!r} is not a function")
    return obj


def _teacher(problem, n_cal, n_eval, seed, n_fit=0, n_grid=0, progress=True, rtol=None,
             mesh=None):
    from samplax.search import make_teacher
    from samplax.search.driver import Progress

    bar = Progress(n_cal + n_eval + n_fit, "teacher", progress, unit="noise")
    try:
        return make_teacher(problem.denoiser, problem.schedule, problem.x_T,
                            problem.t_start, problem.t_end, n_cal=n_cal, n_eval=n_eval,
                            n_fit=n_fit, n_grid=n_grid, seed=seed, rtol=rtol,
                            progress=lambda n: bar.update(n=n), mesh=mesh)
    finally:
        bar.close()


def _baselines(problem, nfe, teacher, progress=True, mesh=None, **kw):
    from samplax.search import evaluate_baselines, spread_denoiser
    from samplax.search.driver import Progress
    from samplax.solvers.registry import BASELINE_SOLVERS

    bar = Progress(len(BASELINE_SOLVERS), f"baselines at NFE {nfe}", progress, unit="solver")
    try:
        return evaluate_baselines(spread_denoiser(problem.denoiser, mesh), problem.schedule,
                                  nfe, teacher,
                                  t_start=problem.t_start, t_end=problem.t_end,
                                  data=_component_data(problem),
                                  progress=lambda name: bar.update(name), **kw)
    finally:
        bar.close()


def _component_data(problem):
    """The data model if the summaries can use it (mixture components, or its own
    quality measure such as the digits' feature FD)."""
    d = problem.data
    return d if hasattr(d, "component") or hasattr(d, "quality") else None


def cmd_search(args):
    _setup_jax(args.precision)
    from samplax.search import atomic_write_json, search
    from samplax.search.context import Objective

    # bad options fail here, before minutes of teacher and baselines (argparse checked
    # each number's type and range)
    if args.times_only != (args.solver is not None):
        raise SystemExit("--times-only and --solver NAME go together: the times of one "
                         "registered solver (samplax solvers lists them)")
    if args.solver is not None:
        from samplax.solvers.registry import SOLVERS

        if args.solver not in SOLVERS:
            raise SystemExit(f"unknown solver {args.solver!r}; choose one of "
                             f"{', '.join(sorted(SOLVERS))}")
    _apply_budget(args)
    config = _search_config(args)
    metric = load_metric(args.metric)
    problem = load_problem(args.model)
    _check_metric(metric, args.metric, problem)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt.json")
    for path, what in ((out, "--out"), (ckpt, "--checkpoint")):
        if not path.parent.is_dir():
            raise SystemExit(f"{what}: cannot write {path}: no directory {path.parent}")
    if args.force:
        ckpt.unlink(missing_ok=True)
    elif ckpt.exists() and not args.resume:
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or --force to "
                         "start again")
    elif out.exists() and not ckpt.exists():
        return _finished(out)
    if args.resume and ckpt.exists():
        _check_checkpoint(ckpt)
    t0 = time.perf_counter()
    if args.times_only:
        return _search_times(args, problem, metric, out, t0)
    # the pipeline says what teacher data its phases use
    needs = config.teacher_needs(Objective.of(metric, config.trajectory_weight))
    if args.max_evals is not None:
        _check_budget(args, config, needs)
    budget = args.budget_preset
    print(f"budget: {args.budget}" + ("" if args.max_evals is None else
                                      f", at most {args.max_evals:,} evaluations"), flush=True)
    print(f"teacher: {args.n_cal} calibration + {needs['n_fit']} fitting + {args.n_eval} "
          "held-out noises", flush=True)
    mesh = _mesh(args.devices)
    teacher = _teacher(problem, args.n_cal, args.n_eval, args.seed, needs["n_fit"],
                       needs["n_grid"], progress=not args.quiet, rtol=budget.teacher_rtol,
                       mesh=mesh)
    print(f"teacher solve: {_teacher_line(teacher.solver)}", flush=True)
    data = _component_data(problem)
    baselines = _baselines(problem, args.nfe, teacher, progress=not args.quiet, metric=metric,
                           mesh=mesh)
    # SIGTERM behaves like Ctrl-C: the checkpoint of every finished step stays.
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        result = search(problem.denoiser, problem.schedule, args.nfe, teacher,
                        t_start=problem.t_start, t_end=problem.t_end, config=config,
                        checkpoint=ckpt, resume=args.resume,
                        time_limit=None if args.time_limit is None
                        else max(args.time_limit - (time.perf_counter() - t0), 0.0),
                        data=data, baselines=baselines, model_name=args.model,
                        model_fingerprint=problem.fingerprint, progress=not args.quiet,
                        metric=metric, max_evals=args.max_evals, mesh=mesh)
    except ValueError as err:  # a budget the teacher left too little of
        if args.max_evals is None:
            raise
        raise SystemExit(f"--max-evals: {err}") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished work is in {ckpt}; rerun with --resume", file=sys.stderr)
        return 130
    except RuntimeError as err:  # the time limit left no candidate
        print(f"{err}: the teacher and baselines took {time.perf_counter() - t0:.0f} s of "
              f"the {args.time_limit} s; raise --time-limit (finished work is in {ckpt})",
              file=sys.stderr)
        return 1
    result["budget"] = args.budget
    atomic_write_json(out, result)
    # the result holds everything the checkpoint did (continue_search goes on from it)
    ckpt.unlink(missing_ok=True)
    _print_comparison(result)
    _print_cost(result["cost"])
    for name, why in result["search"]["skipped"].items():
        print(f"skipped: {name} ({why})")
    print(f"saved {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _mesh(devices):
    """``--devices N``: a noise mesh of the first N devices (default: every visible one)."""
    import jax

    from samplax.search import noise_mesh

    try:
        mesh = noise_mesh(devices)
    except ValueError as err:
        raise SystemExit(f"--devices: {err}") from None
    n = 1 if mesh is None else mesh.size
    if n > 1 or devices is not None:
        print(f"devices: {n} ({jax.devices()[0].platform}), network calls split over the "
              "noises", flush=True)
    return mesh


def _host_devices(n) -> None:
    """``--devices N`` on a CPU: split the host into N XLA devices. XLA reads the flag
    when JAX starts its backend, which the commands do only after parsing (a backend
    already started keeps its devices, and ``noise_mesh`` then says how many)."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if n and n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _apply_budget(args) -> None:
    """``--budget NAME``: its calibration noises and evaluation bound unless given
    (its phase settings come first in :func:`_search_config`)."""
    from samplax.search.budgets import get_budget

    try:
        args.budget_preset = get_budget(args.budget)
    except ValueError as err:
        raise SystemExit(f"--budget: {err}") from None
    if args.n_cal is None:
        args.n_cal = args.budget_preset.n_cal
    if args.max_evals is None:
        args.max_evals = args.budget_preset.max_evals


def _teacher_line(solver: dict | None) -> str:
    if not solver or solver.get("method") != "dopri8":
        return "a custom solve"
    return f"diffrax Dopri8 in {solver['dtype']}, rtol = atol = {solver['rtol']:g}"


def _check_budget(args, config, needs: dict) -> None:
    """Refuse a --max-evals that cannot pay even the cheapest possible teacher (one
    Dopri8 step per noise) and one generation, before any work."""
    from samplax.models.reference import DOPRI8_EVALS_PER_STEP
    from samplax.search.run import smallest_budget

    if args.max_evals < 1:
        raise SystemExit(f"--max-evals must be >= 1, got {args.max_evals}")
    floor = (args.n_cal + needs["n_fit"]) * (DOPRI8_EVALS_PER_STEP + 1)
    least = smallest_budget(config, args.n_cal, args.nfe, floor)
    if args.max_evals < least:
        raise SystemExit(f"--max-evals {args.max_evals} is too small: the teacher alone needs "
                         f"at least {floor} and one generation of each structure "
                         f"{least - floor}; give at least {least}, or fewer noises "
                         "(--n-cal, --n-fit)")


def _print_cost(cost: dict) -> None:
    phases = ", ".join(f"{k} {v['total']:,}" for k, v in cost["phases"].items())
    teacher = f"{cost['teacher']['total']:,}" if cost["teacher"] else "not counted"
    ex = cost["excluded"]
    print(f"cost: {cost['evaluations']:,} sample-evaluations (teacher {teacher}; {phases}); "
          f"not counted: held-out teacher {ex['teacher_heldout'] or 0:,}, report "
          f"{ex['report']['total']:,}, baselines {ex['baselines']:,}")


def _search_times(args, problem, metric, out: Path, t0: float) -> int:
    """``search --solver NAME --times-only``: the times of one registered solver."""
    from samplax.search import atomic_write_json, search_times
    from samplax.search.times_only import solver_steps

    try:
        solver_steps(args.solver, problem.schedule, args.nfe, problem.t_end)
    except ValueError as err:
        raise SystemExit(f"samplax search: {err}") from None
    print(f"teacher: {args.n_cal} calibration + {args.n_eval} held-out noises", flush=True)
    teacher = _teacher(problem, args.n_cal, args.n_eval, args.seed, progress=not args.quiet,
                       rtol=args.budget_preset.teacher_rtol)
    baselines = _baselines(problem, args.nfe, teacher, progress=not args.quiet, metric=metric)
    result = search_times(problem.denoiser, problem.schedule, args.solver, args.nfe, teacher,
                          t_start=problem.t_start, t_end=problem.t_end, metric=metric,
                          data=_component_data(problem), baselines=baselines,
                          model_name=args.model, model_fingerprint=problem.fingerprint)
    atomic_write_json(out, result)
    _print_comparison(result, label=f"{args.solver}, searched times")
    print(f"saved {out} ({time.perf_counter() - t0:.0f} s); samplax export {out} --format "
          "diffusers|comfyui|json writes its sigmas")
    return 0


def _load_result(path):
    from samplax.search import ResultError, load_result

    try:
        return load_result(path)
    except (ResultError, OSError) as err:
        raise SystemExit(f"cannot use {path}: {err}") from None


def _check_metric(metric, spec, problem) -> None:
    """A ``module:function`` metric is called once on two tiny batches: one that does
    not take ``(samples, ref)`` or give a finite number fails here, not after the
    teacher."""
    if not callable(metric):
        return
    import jax.numpy as jnp

    x = jnp.linspace(-1.0, 1.0, 4 * problem.dim).reshape(4, problem.dim)
    try:
        value = float(metric(x, 0.5 * x))
    except Exception as err:  # noqa: BLE001 - the user's function: say what it did
        raise SystemExit(f"--metric {spec}: calling it as fn(samples, ref) on [4, "
                         f"{problem.dim}] arrays failed: {type(err).__name__}: {err}") from None
    if not math.isfinite(value):
        raise SystemExit(f"--metric {spec}: gave {value} on two finite batches; it must "
                         "return a finite scalar")


def _check_checkpoint(ckpt: Path) -> None:
    """``--resume`` reads the checkpoint before any work: a truncated or foreign file
    fails now with its reason."""
    import json

    try:
        obj = json.loads(ckpt.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"--resume: cannot read the checkpoint {ckpt} ({err}); delete it "
                         "or pass --force to start again") from None
    from samplax.search.state import STATE_SCHEMA

    if not isinstance(obj, dict) or obj.get("schema") != STATE_SCHEMA or "ident" not in obj:
        raise SystemExit(f"--resume: {ckpt} is not a samplax search checkpoint (schema "
                         f"{STATE_SCHEMA}); delete it or pass --force to start again")


def _check_model(obj: dict, args, problem=None) -> dict:
    """Refuse a schedule searched for another model (by name, and by fingerprint when
    ``problem`` is given), unless ``--other-model``."""
    from samplax.search.result import ResultError, check_result_model

    if args.other_model:
        return obj
    try:
        check_result_model(obj, args.model, None if problem is None else problem.fingerprint)
    except ResultError as err:
        raise SystemExit(f"{err}; pass --other-model to use it anyway") from None
    return obj


def _finished(out: Path) -> int:
    """A rerun of a finished search: say where its result is."""
    from samplax.search import ResultError, load_result

    try:
        res = load_result(out)
    except (ResultError, OSError) as err:
        raise SystemExit(f"{out} exists and is not a search result ({err}); pass --force to "
                         "overwrite it") from None
    held = res["objective"]["heldout"]["median_rmse"]
    print(f"{out} holds a finished search (NFE {res['nfe']}, held-out median RMSE "
          f"{held:.4g}); pass --force to search again")
    return 0


def _search_config(args):
    """The :class:`SearchConfig` of the command line: ``--population``,
    ``--generations``, ``--n-fit``, ``--seed``, then every ``--set KEY=VALUE`` (KEY
    ``phase.field``, ``space.field``, a top-level field or a deprecated flat name;
    VALUE in JSON: ``5``, ``0.01``, ``[true]``, or a bare word for a text setting)."""
    import json
    import warnings

    from samplax.search import SearchConfig

    items = [f"seed={args.seed}"]
    budget = getattr(args, "budget_preset", None)
    config = SearchConfig() if budget is None else budget.config()
    for flag, path in (("population", "population.size"),
                       ("generations", "population.generations"),
                       ("n_fit", "coordinate_fit.n_fit")):
        if getattr(args, flag) is not None:
            items.append(f"{path}={getattr(args, flag)}")
    for item in items + list(args.set or ()):
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. plan_fit.iters=0")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word: --set plan_fit.method=adam
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeprecationWarning)
                config = config.set_path(key, value)
        except (KeyError, TypeError, ValueError) as err:
            msg = err.args[0] if err.args else err
            if isinstance(err, TypeError) and value is raw:
                msg = f"{msg} (VALUE is JSON: 5, 0.01, [true]; a bare word only for text)"
            raise SystemExit(f"--set {item!r}: {msg}") from None
        for w in caught:
            print(f"--set {key}: {w.message}", file=sys.stderr)
    return config


def _print_comparison(result, label="searched"):
    rows = [(k, v) for k, v in result.get("baselines", {}).items() if k != "best"]
    rows.sort(key=lambda kv: kv[1]["median_rmse"])
    h = dict(result["objective"]["heldout"])
    metric = result["objective"].get("metric") or {}
    if metric.get("name", "rmse") != "rmse":
        h["metric"] = metric["heldout"]
    if label:
        rows.insert(0, (label, h))
    # a metric column if the search minimized one (its baselines then carry it too)
    met = all("metric" in v for _, v in rows)
    if met:
        rows.sort(key=lambda kv: kv[1]["metric"])
    rows = rows[: 9 if label else 8]
    # a wrong-component column only for data with mixture components, a feature-FD
    # column for data that measures it (the digits)
    comp = all("wrong_component" in v for _, v in rows)
    fd = all("fd" in v for _, v in rows)
    print(f"\nNFE {result['nfe']} — held-out per-sample RMSE"
          + (" (wrong-component share)" if comp else "")
          + (", the feature Fréchet distance to the data" if fd else "")
          + (f", and the searched metric ({metric['name']})" if met else ""))
    print("| schedule | median RMSE | mean RMSE |" + (" wrong component |" if comp else "")
          + (" feature FD |" if fd else "") + (f" {metric['name']} |" if met else ""))
    print("|---|---:|---:|" + ("---:|" if comp else "") + ("---:|" if fd else "")
          + ("---:|" if met else ""))
    for k, v in rows:
        print(f"| {k} | {v['median_rmse']:.4g} | {v['mean_rmse']:.4g} |"
              + (f" {v['wrong_component']:.3f} |" if comp else "")
              + (f" {v['fd']:.3f} |" if fd else "")
              + (f" {v['metric']:.4g} |" if met else ""))
    s = result.get("search", {})
    if s:
        print(f"search: {s['seconds']:.0f} s, {s['candidates_per_second']:.1f} candidate "
              "evaluations/s")


def cmd_sample(args):
    _setup_jax()
    import jax
    import numpy as np

    from samplax.search import load_plan
    from samplax.solvers.executor import sample
    from samplax.solvers.registry import plan_for_nfe

    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise SystemExit("--out must end in .npy or .png")
    _check_writable(out, picture=out.suffix == ".png")
    problem = load_problem(args.model)
    if args.schedule:
        _check_model(_load_result(args.schedule), args, problem)
        plan = load_plan(args.schedule, problem.schedule)
    else:
        try:
            plan = plan_for_nfe(args.solver, problem.schedule, args.nfe, args.steps,
                                t_start=problem.t_start, t_end=problem.t_end)
        except ValueError as err:  # an unknown solver or step schedule, an infeasible NFE
            raise SystemExit(f"samplax sample: {err}") from None
    x_T = problem.x_T(jax.random.key(args.seed), args.n)
    # checked: a NaN or inf anywhere names its slot instead of saving a broken sample
    check = plan.basis is None
    try:
        x = np.asarray(jax.jit(lambda p, x: sample(problem.denoiser, p, x, check=check))(
            plan, x_T))
    except Exception as err:  # the check's error arrives wrapped by the runtime
        msg = str(err)
        if "sample(check=True)" not in msg:
            raise
        line = msg[msg.index("sample(check=True)"):].splitlines()[0]
        raise SystemExit(f"samplax sample: {line}") from None
    if out.suffix == ".npy":
        np.save(out, x)
    else:
        _save_grid(x, out)
    print(f"{plan.nfe} NFE, {x.shape[0]} samples -> {out}")
    return 0


def _check_writable(path: Path, picture: bool) -> None:
    """Fail before any sampling if ``path`` cannot be written (or drawn)."""
    if not path.parent.is_dir():
        raise SystemExit(f"cannot write {path}: no directory {path.parent}")
    if picture:
        if path.suffix != ".png":
            raise SystemExit(f"a picture must be a .png file, got {path}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("drawing a picture needs matplotlib: pip install "
                             "'samplax[plot]'") from None


def _save_grid(x, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = x.shape[-1]
    side = int(round(np.sqrt(d)))
    if side * side == d and d > 2:  # images, e.g. 8x8 digits
        n = int(np.ceil(np.sqrt(len(x))))
        fig, axes = plt.subplots(n, n, figsize=(n, n))
        for ax, img in zip(np.ravel(axes), list(x) + [None] * (n * n - len(x))):
            ax.axis("off")
            if img is not None:
                ax.imshow(img.reshape(side, side), cmap="gray")
    else:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=3)
        ax.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def cmd_compare(args):
    _setup_jax()
    from samplax.search import resize_result

    if args.plot:
        _check_writable(Path(args.plot), picture=True)
    problem = load_problem(args.model)
    obj = None
    nfe = args.nfe
    if args.searched:
        obj = _check_model(_load_result(args.searched), args, problem)
        # compare at the searched budget unless told otherwise (then resized to it)
        nfe = obj["nfe"] if nfe is None else nfe
        if nfe != obj["nfe"]:
            try:
                obj = resize_result(obj, nfe, problem.schedule)
            except ValueError as err:
                raise SystemExit(f"samplax compare: --nfe {nfe}: {err}") from None
    elif nfe is None:
        nfe = 10
    teacher = _teacher(problem, 8, args.n, args.seed, progress=not args.quiet)
    result = {"nfe": nfe, "baselines": _baselines(problem, nfe, teacher, not args.quiet)}
    if obj is not None:
        import jax

        from samplax.metrics import error_summary
        from samplax.search.result import plan_from_result
        from samplax.solvers.executor import sample

        plan = plan_from_result(obj, problem.schedule)
        x = jax.jit(lambda p, x: sample(problem.denoiser, p, x))(plan, teacher.x_eval)
        result["objective"] = {"heldout": error_summary(x, teacher.ref_eval,
                                                        _component_data(problem))}
    else:
        best = result["baselines"]["best"]
        result["objective"] = {"heldout": best}
        print(f"best hand-made: {best['name']}")
    _print_comparison(result, label="searched" if obj is not None else None)
    if args.plot:
        _plot_against_nfe(problem, teacher, result, Path(args.plot), obj is not None,
                          not args.quiet)
    return 0


def _plot_against_nfe(problem, teacher, result, path: Path, searched: bool,
                      progress: bool) -> None:
    """Held-out median RMSE against NFE: each baseline solver on its best step
    schedule at a few budgets around the compared one, and the searched schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    nfe = result["nfe"]
    budgets = sorted({max(2, nfe - 2), nfe, nfe + 2, 2 * nfe})
    curves: dict = {}
    for n in budgets:
        base = result["baselines"] if n == nfe else _baselines(problem, n, teacher, progress)
        for name, s in base.items():
            if name == "best":
                continue
            solver = name.split("/")[0]
            best = curves.setdefault(solver, {})
            best[n] = min(best.get(n, float("inf")), s["median_rmse"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for solver, pts in sorted(curves.items()):
        ns = sorted(pts)
        ax.plot(ns, [pts[n] for n in ns], marker="o", lw=1, ms=3, label=solver)
    if searched:
        ax.plot([nfe], [result["objective"]["heldout"]["median_rmse"]], "k*", ms=14,
                label="searched")
    ax.set(xlabel="NFE", ylabel="held-out median RMSE", yscale="log",
           title=f"{problem.name}: error against NFE (best step schedule per solver)")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot -> {path}")


def cmd_export(args):
    _setup_jax()
    import json

    from samplax.search.export import ExportError, export_schedule

    if args.out:
        _check_writable(Path(args.out), picture=False)
    problem = load_problem(args.model)
    obj = _check_model(_load_result(args.schedule), args, problem)
    try:
        out = export_schedule(obj, problem.schedule, args.format)
    except ExportError as err:
        raise SystemExit(f"samplax export: {err}") from None
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"{args.format} schedule of {obj['solver']} ({obj['nfe']} NFE) -> {args.out}")
    else:
        print(text)
    return 0


def cmd_solvers(args):
    from samplax.solvers.registry import SOLVERS

    for name, spec in SOLVERS.items():
        print(f"{name:28s} order {spec.order}  {spec.summary}")
    return 0


def main(argv=None):
    from samplax import __version__
    from samplax.models.builtin import builtin_problems
    from samplax.solvers.registry import MAX_NFE

    ap = argparse.ArgumentParser(prog="samplax", description="Diffusion sampling solvers.")
    ap.add_argument("--version", action="version", version=f"samplax {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    model_help = (f"a built-in model ({', '.join(builtin_problems())}) or module:function "
                  "returning a samplax.models.builtin.Problem (default: gmm64)")

    s = sub.add_parser("search", help="search the best schedule for a model and NFE budget")
    s.add_argument("--model", default="gmm64", help=model_help)
    s.add_argument("--nfe", type=_integer(1, MAX_NFE), required=True,
                   help="the exact budget of network evaluations per sample")
    s.add_argument("--out", default="schedule.json", help="the result file (JSON)")
    s.add_argument("--checkpoint", default=None,
                   help="written after every step (default: OUT with .ckpt.json); removed "
                        "once the result is saved")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search")
    s.add_argument("--force", action="store_true",
                   help="search again over an existing result or checkpoint")
    s.add_argument("--time-limit", type=_seconds, default=None,
                   help="seconds for the whole command, teacher and baselines included; "
                        "the phases that do not fit are listed as skipped")
    s.add_argument("--max-evals", type=_integer(1), default=None,
                   help="the most network evaluations of one sample the search may spend, "
                        "teacher included (held-out report excluded); phases are cut to "
                        "their share, and a budget too small is refused at once")
    s.add_argument("--budget", default="default", metavar="NAME",
                   help="the search's size: fast (at most 100k evaluations), default "
                        "(at most 1M) or thorough (every phase in full, about 12M); "
                        "sets --n-cal, --max-evals and the phase mix unless given "
                        "(samplax.search.budgets)")
    s.add_argument("--precision", default="float64", choices=("float64", "float32"),
                   help="float32: x64 off, as on a TPU or a float32 model; the teacher "
                        "then solves in float32 (rtol 1e-5)")
    s.add_argument("--n-cal", type=_integer(1), default=None,
                   help="calibration noises the search fits (default: the budget's, "
                        "32 for fast and default, 256 for thorough)")
    s.add_argument("--n-fit", type=_integer(0), default=None,
                   help="extra calibration noises for the per-coordinate fit (default 2048; "
                        "0: skip it); = --set coordinate_fit.n_fit=N")
    s.add_argument("--n-eval", type=_integer(1), default=1024,
                   help="held-out noises the result is reported on (default 1024)")
    s.add_argument("--generations", type=_integer(1), default=None,
                   help="generations of the population phase (default 6)")
    s.add_argument("--population", type=_integer(1), default=None,
                   help="candidates per generation (default 48)")
    s.add_argument("--seed", type=_integer(0), default=0,
                   help="the search's seed and the teacher's")
    s.add_argument("--metric", default=None,
                   help="what to minimize: rmse (default, per-sample error against the "
                        "teacher), energy (energy distance to the teacher's samples) or "
                        "module:function giving fn(samples, ref) -> scalar")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting of a phase, e.g. --set coordinate_fit.iters=0 or "
                        "--set space.afs=[true] (repeatable; see the README's table)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--devices", type=_integer(1), default=None,
                   help="split the network calls of the teacher, the search and the report "
                        "over the first N devices along the noises (default: every "
                        "visible device; on a CPU, N > 1 splits its cores into N devices)")
    s.add_argument("--solver", default=None,
                   help="with --times-only: the registered solver whose timesteps are "
                        "searched (samplax solvers lists them)")
    s.add_argument("--times-only", action="store_true",
                   help="search only the timesteps of --solver: a schedule other tools "
                        "run with their own solver (samplax export writes it)")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("sample", help="sample with a saved schedule or a named solver")
    s.add_argument("--model", default="gmm64", help=model_help)
    s.add_argument("--schedule", default=None, help="a search result JSON")
    s.add_argument("--other-model", action="store_true",
                   help="use a schedule searched for another model")
    s.add_argument("--solver", default="dpm_solver_pp_2m",
                   help="a registered solver (samplax solvers lists them)")
    s.add_argument("--nfe", type=_integer(1, MAX_NFE), default=10,
                   help="network evaluations (with --solver)")
    s.add_argument("--steps", default="logsnr", help="step schedule for --solver")
    s.add_argument("--n", type=_integer(1), default=64, help="number of samples")
    s.add_argument("--seed", type=_integer(0), default=0, help="seed of the initial noise")
    s.add_argument("--out", default="samples.npy", help="samples.npy, or a .png picture")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("compare", help="hand-made baselines (and a searched schedule)")
    s.add_argument("--model", default="gmm64", help=model_help)
    s.add_argument("--nfe", type=_integer(1, MAX_NFE), default=None,
                   help="default: the searched result's NFE, or 10")
    s.add_argument("--searched", default=None, help="a search result JSON to compare")
    s.add_argument("--other-model", action="store_true",
                   help="compare a schedule searched for another model")
    s.add_argument("--n", type=_integer(1), default=256, help="held-out noises")
    s.add_argument("--seed", type=_integer(0), default=1, help="seed of the held-out noises")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw the error against NFE (baselines and the searched "
                        "schedule)")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("export", help="write a times-only searched schedule as the sigmas "
                                      "diffusers or ComfyUI take")
    s.add_argument("schedule", help="a search result JSON (from search --times-only)")
    s.add_argument("--format", default="json", choices=("json", "diffusers", "comfyui"),
                   help="json: times, sigmas, labels; diffusers / comfyui: the sigmas with "
                        "the scheduler or sampler that runs them exactly")
    s.add_argument("--model", default="gmm64", help=model_help)
    s.add_argument("--other-model", action="store_true",
                   help="export a schedule searched for another model")
    s.add_argument("--out", default=None, help="the file to write (default: stdout)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("solvers", help="list the registered solvers")
    s.set_defaults(fn=cmd_solvers)

    args = ap.parse_args(argv)
    _host_devices(getattr(args, "devices", None))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
