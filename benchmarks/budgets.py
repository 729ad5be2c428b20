"""Quality against evaluations: the named budgets (``samplax.search.budgets``) and
budgets between them, per model and NFE.

Each row builds the budget's teacher (its calibration noises and tolerance), runs
``search(..., max_evals=...)`` with its phase mix, and reports the search's
evaluations (teacher included, held-out report excluded, as ``cost.evaluations``),
the held-out median RMSE on 512 noises, the best hand-made schedule's on the same
noises, their ratio, and the wall time of teacher and search on this machine. The
held-out references come from the same teacher solve (its error, below 1e-6 on gmm64,
``benchmarks/teacher.py``, is far below every searched error here).

Run: ``python benchmarks/budgets.py --model gmm64 digits --nfe 5 8`` (1-4 minutes a
row on 2 CPU cores; ``--levels fast default`` for the named budgets only).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

from samplax.cli import load_problem  # noqa: E402
from samplax.search import evaluate_baselines, make_teacher, search  # noqa: E402
from samplax.search.budgets import BUDGETS, Budget  # noqa: E402
from samplax.search.context import Objective  # noqa: E402

#: Budgets between and beside the named ones: the fast mix on 16 noises cut to 30k,
#: the default mix cut to 300k.
LEVELS: dict[str, Budget] = {
    "30k": BUDGETS["fast"]._replace(name="30k", max_evals=30_000, n_cal=16),
    "fast": BUDGETS["fast"],
    "300k": BUDGETS["default"]._replace(name="300k", max_evals=300_000),
    "default": BUDGETS["default"],
    "thorough": BUDGETS["thorough"],
}


def row(model: str, nfe: int, budget: Budget, n_eval: int = 512) -> dict:
    p = load_problem(model)
    config = budget.config()
    n_fit = config.teacher_needs(Objective.of(None, 0.0))["n_fit"]
    t0 = time.perf_counter()
    teacher = make_teacher(p.denoiser, p.schedule, p.x_T, p.t_start, p.t_end,
                           n_cal=budget.n_cal, n_eval=n_eval, n_fit=n_fit,
                           rtol=budget.teacher_rtol)
    result = search(p.denoiser, p.schedule, nfe, teacher, t_start=p.t_start, t_end=p.t_end,
                    config=config, max_evals=budget.max_evals, progress=False,
                    model_name=model)
    seconds = time.perf_counter() - t0
    base = evaluate_baselines(p.denoiser, p.schedule, nfe, teacher, t_start=p.t_start,
                              t_end=p.t_end)["best"]
    median = result["objective"]["heldout"]["median_rmse"]
    return {"model": model, "nfe": nfe, "budget": budget.name,
            "evaluations": result["cost"]["evaluations"], "median": median,
            "best": base["median_rmse"], "best_name": base["name"],
            "ratio": median / base["median_rmse"], "seconds": seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["gmm64"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 8])
    ap.add_argument("--levels", nargs="+", default=["30k", "fast", "300k", "default"],
                    choices=list(LEVELS))
    args = ap.parse_args(argv)
    print("| model | NFE | budget | evaluations | held-out median | best hand-made | "
          "searched / best | teacher + search s |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for model in args.model:
        for nfe in args.nfe:
            for level in args.levels:
                try:
                    r = row(model, nfe, LEVELS[level])
                except ValueError as err:  # a budget below the smallest sensible one
                    print(f"| {model} | {nfe} | {level} | refused: {err} |||||", flush=True)
                    continue
                print(f"| {model} | {nfe} | {level} | {r['evaluations']:,} | "
                      f"{r['median']:.2e} | {r['best']:.2e} ({r['best_name']}) | "
                      f"{r['ratio']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
