"""Searched schedules against hand-made ones (issue 5's acceptance table).

For each NFE: the best hand-made baseline (DPM-Solver++, UniPC, DEIS, iPNDM over
uniform-time, uniform-log-SNR, time-quadratic, Karras and AYS steps, chosen on
the held-out set itself, in the baselines' favour), DPM-Solver++(2M) with
Adam-optimized timesteps, and the default search; all on the same held-out
noises (disjoint from the calibration noises the search sees).

Run: ``python benchmarks/search.py --model gmm64 --nfe 4 5 6 8 10``
(about 4-11 minutes per NFE on 2 CPU cores). Prints a markdown table; each
result is also saved as ``search_<model>_nfe<N>.json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from samplax.cli import load_problem  # noqa: E402
from samplax.search import (  # noqa: E402
    SearchConfig,
    atomic_write_json,
    evaluate_baselines,
    make_teacher,
    optimize_times_2m,
    search,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gmm64")
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    ap.add_argument("--n-cal", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    p = load_problem(args.model)
    data = p.data if hasattr(p.data, "component") else None
    teacher = make_teacher(p.denoiser, p.schedule, p.x_T, p.t_start, p.t_end,
                           n_cal=args.n_cal, n_eval=args.n_eval)
    kw = dict(t_start=p.t_start, t_end=p.t_end, data=data)
    rows = []
    for nfe in args.nfe:
        base = evaluate_baselines(p.denoiser, p.schedule, nfe, teacher, **kw)
        base2 = evaluate_baselines(p.denoiser, p.schedule, 2 * nfe, teacher, **kw)
        o2m = optimize_times_2m(p.denoiser, p.schedule, nfe, teacher, **kw)
        t0 = time.perf_counter()
        res = search(p.denoiser, p.schedule, nfe, teacher, config=SearchConfig(),
                     baselines=base, model_name=args.model, progress=False, **kw)
        secs = time.perf_counter() - t0
        atomic_write_json(Path(args.out_dir) / f"search_{args.model}_nfe{nfe}.json", res)
        rows.append((nfe, base["best"], base2["best"], o2m, res, secs))
        print(f"NFE {nfe} done in {secs:.0f} s", flush=True)

    def fmt(s):
        w = s.get("wrong_component")
        return f"{s['median_rmse']:.4f}" + ("" if w is None else f" ({w:.3f})")

    print(f"\n{args.model}: held-out median RMSE (wrong-component share), "
          f"{args.n_eval} held-out / {args.n_cal} calibration noises")
    print("| NFE | best hand-made | times-only 2M | searched | searched / best | "
          "best hand-made at 2 NFE | search s | cand/s |")
    print("|---:|---|---|---|---:|---|---:|---:|")
    for nfe, b, b2, o2m, res, secs in rows:
        h = res["objective"]["heldout"]
        print(f"| {nfe} | {fmt(b)} {b['name']} | {fmt(o2m)} | {fmt(h)} | "
              f"{h['median_rmse'] / b['median_rmse']:.3f} | {fmt(b2)} {b2['name']} | "
              f"{secs:.0f} | {res['search']['candidates_per_second']:.1f} |")


if __name__ == "__main__":
    main()
