"""Searched schedules against hand-made ones (issue 5's acceptance table).

For each NFE: the best hand-made baseline (DPM-Solver++, UniPC, DEIS, iPNDM over
uniform-time, uniform-log-SNR, time-quadratic, Karras and AYS steps, chosen on
the held-out set itself, in the baselines' favour), DPM-Solver++(2M) with
Adam-optimized timesteps, and the default search; all on the same held-out
noises (disjoint from the calibration noises the search sees). For the digits
model each row also gives the feature Fréchet distance of the held-out samples to
the 1797 real digits (and that of the teacher's own samples, the floor any solver
of this ODE can reach).

``--transfer``: each searched schedule moved to NFE - 1 and NFE + 1
(:func:`samplax.search.resize_result`) against the best hand-made baseline there.

Run: ``python benchmarks/search.py --model gmm64 --nfe 4 5 6 8 10``
(about 4-11 minutes per NFE on 2 CPU cores). Prints a markdown table; each
result is also saved as ``search_<model>_nfe<N>.json`` in ``--out-dir`` and, with
``--reuse``, read back from there instead of searched again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from samplax.cli import load_problem  # noqa: E402
from samplax.metrics import error_summary  # noqa: E402
from samplax.search import (  # noqa: E402
    SearchConfig,
    atomic_write_json,
    continue_search,
    evaluate_baselines,
    load_result,
    make_teacher,
    optimize_times_2m,
    resize_result,
    search,
)
from samplax.search.result import plan_from_result  # noqa: E402
from samplax.solvers._common import reaches_zero_noise  # noqa: E402
from samplax.solvers.dpm_solver_pp import dpm_solver_pp  # noqa: E402
from samplax.solvers.executor import sample  # noqa: E402
from samplax.solvers.registry import STEP_SCHEDULES, get_solver, steps_for_nfe  # noqa: E402


def baseline_plan(p, name: str, nfe: int):
    """The plan of a baseline named ``"solver/step schedule"``."""
    solver, sched = name.split("/")
    spec = get_solver(solver)
    n = steps_for_nfe(spec, nfe, reaches_zero_noise(p.schedule, jnp.asarray(p.t_end)))
    return spec.build(p.schedule, STEP_SCHEDULES[sched](p.schedule, n, p.t_start, p.t_end))


def fmt(s):
    w = s.get("wrong_component")
    out = f"{s['median_rmse']:.4f}" + ("" if w is None else f" ({w:.3f})")
    return out + (f" FD {s['fd']:.3f}" if "fd" in s else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gmm64")
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    ap.add_argument("--n-cal", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--n-fit", type=int, default=2048,
                    help="extra calibration noises for the per-coordinate fit")
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--reuse", action="store_true", help="load saved results, do not search")
    ap.add_argument("--retune", action="store_true",
                    help="with --reuse: redo the fitting phases (plan, output and "
                         "per-coordinate fits) of SearchConfig() on the saved searched plan")
    ap.add_argument("--transfer", action="store_true", help="also report NFE -/+ 1 transfer")
    args = ap.parse_args()
    p = load_problem(args.model)
    data = p.data if hasattr(p.data, "component") else None
    teacher = make_teacher(p.denoiser, p.schedule, p.x_T, p.t_start, p.t_end,
                           n_cal=args.n_cal, n_eval=args.n_eval, n_fit=args.n_fit)
    kw = dict(t_start=p.t_start, t_end=p.t_end, data=data)
    run = jax.jit(lambda plan, x: sample(p.denoiser, plan, x))
    fd = None
    if args.model == "digits":
        from samplax.models.digits import digits_data
        from samplax.models.digits_features import frechet_distance

        real = digits_data()
        fd = lambda plan: frechet_distance(run(plan, teacher.x_eval), real)  # noqa: E731
        print(f"digits: FD of the teacher's held-out samples to the data "
              f"{frechet_distance(teacher.ref_eval, real):.3f}", flush=True)

    rows, transfer = [], []
    for nfe in args.nfe:
        path = Path(args.out_dir) / f"search_{args.model}_nfe{nfe}.json"
        base = evaluate_baselines(p.denoiser, p.schedule, nfe, teacher, **kw)
        base2 = evaluate_baselines(p.denoiser, p.schedule, 2 * nfe, teacher, **kw)
        o2m = optimize_times_2m(p.denoiser, p.schedule, nfe, teacher, **kw)
        if args.reuse and path.exists():
            res = load_result(path)
            secs = res["search"]["seconds"]
            if args.retune:
                # redo the fitting phases of SearchConfig() on the saved searched plan
                cfg = SearchConfig()
                fits = [cfg.phase(n) for n in ("plan_fit", "output_fit", "coordinate_fit")]
                t0 = time.perf_counter()
                res = continue_search(dict(res, tuned_plan=None), fits, p.denoiser,
                                      p.schedule, teacher, config=cfg, data=data)
                res["search"]["refit_seconds"] = time.perf_counter() - t0
                atomic_write_json(path, res)
                res = load_result(path)
        else:
            t0 = time.perf_counter()
            res = search(p.denoiser, p.schedule, nfe, teacher, config=SearchConfig(),
                         baselines=base, model_name=args.model, progress=False, **kw)
            secs = time.perf_counter() - t0
            atomic_write_json(path, res)
            res = load_result(path)
        held = dict(res["objective"]["heldout"])
        untuned = plan_from_result(dict(res, tuned_plan=None), p.schedule)
        before = error_summary(run(untuned, teacher.x_eval), teacher.ref_eval, data)
        best = dict(base["best"])
        if fd is not None:
            held["fd"] = fd(plan_from_result(res, p.schedule))
            before["fd"] = fd(untuned)
            best["fd"] = fd(baseline_plan(p, best["name"], nfe))
            o2m["fd"] = fd(dpm_solver_pp(p.schedule, jnp.asarray(o2m["timesteps"]), order=2))
        rows.append((nfe, best, base2["best"], o2m, res, before, held, secs))
        print(f"NFE {nfe} done in {secs:.0f} s", flush=True)
        if args.transfer:
            for m in (nfe - 1, nfe + 1):
                moved = plan_from_result(resize_result(res, m, p.schedule), p.schedule)
                got = error_summary(run(moved, teacher.x_eval), teacher.ref_eval, data)
                b = dict(evaluate_baselines(p.denoiser, p.schedule, m, teacher, **kw)["best"])
                if fd is not None:
                    got["fd"] = fd(moved)
                    b["fd"] = fd(baseline_plan(p, b["name"], m))
                transfer.append((nfe, m, got, b))

    print(f"\n{args.model}: held-out median RMSE (wrong-component share), "
          f"{args.n_eval} held-out / {args.n_cal} calibration noises")
    print("| NFE | best hand-made | times-only 2M | before tuning | searched | searched / best | "
          "best hand-made at 2 NFE | search s | cand/s |")
    print("|---:|---|---|---|---|---:|---|---:|---:|")
    for nfe, b, b2, o2m, res, before, h, secs in rows:
        print(f"| {nfe} | {fmt(b)} {b['name']} | {fmt(o2m)} | {fmt(before)} | {fmt(h)} | "
              f"{h['median_rmse'] / b['median_rmse']:.3f} | {fmt(b2)} {b2['name']} | "
              f"{secs:.0f} | {res['search']['candidates_per_second']:.1f} |")
    if transfer:
        print("\nTransfer: the schedule searched at NFE n, resized to NFE m (held-out)")
        print("| searched at | used at | resized | best hand-made at m | resized / best |")
        print("|---:|---:|---|---|---:|")
        for n, m, got, b in transfer:
            print(f"| {n} | {m} | {fmt(got)} | {fmt(b)} {b['name']} | "
                  f"{got['median_rmse'] / b['median_rmse']:.3f} |")


if __name__ == "__main__":
    main()
