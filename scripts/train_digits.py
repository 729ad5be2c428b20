"""Train the packaged 8x8-digits models: the EDM-preconditioned denoiser and the feature classifier.

Reproduces ``samplax/models/data/digits_denoiser.{msgpack,json}`` and
``samplax/models/data/digits_classifier.{msgpack,json}`` (seeded; CPU, a few minutes
on 2 cores)::

    python scripts/train_digits.py                    # both
    python scripts/train_digits.py --only classifier
    python scripts/train_digits.py --report           # FD table of DDIM samples, no training

Denoiser: DDPM-style denoising objective (Ho et al. 2020) with the EDM preconditioning
and loss weight (Karras et al. 2022), noise levels ``sigma_tilde`` drawn half from EDM's
log-normal and half log-uniformly over the range a VP-linear sampler visits, optax Adam
with warm-up + cosine decay, and an EMA of the weights (the EMA is saved).
Classifier: an MLP on the ``train`` split (digits whose index is not divisible by 5),
with input-noise augmentation so its features stay meaningful on imperfect samples.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samplax.models.digits import (  # noqa: E402
    DenoiserMLP,
    digits_data,
    edm_c_noise,
    edm_preconditioning,
    save_checkpoint,
)
from samplax.models.digits_features import ClassifierMLP  # noqa: E402

OUT_DIR = ROOT / "samplax" / "models" / "data"

DENOISER = dict(
    model=dict(width=192, depth=3, emb_dim=128, n_freqs=16, max_freq=32.0),
    seed=0, steps=6000, batch=256, lr=2e-3, warmup=500, ema=0.999,
    p_mean=-1.2, p_std=1.2, log_st_min=float(np.log(2e-3)), log_st_max=float(np.log(300.0)),
)
CLASSIFIER = dict(
    model=dict(hidden=256, feature_dim=64, n_classes=10),
    seed=0, steps=2000, batch=256, lr=2e-3, weight_decay=1e-4, dropout=0.2, input_noise=0.2,
)
CHUNK = 500  # steps per jitted lax.scan (one loss printout each)


def n_params(params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def lr_schedule(cfg):
    return optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], cfg["warmup"], cfg["steps"],
                                              end_value=0.02 * cfg["lr"])


# -- denoiser -----------------------------------------------------------------------------
def sample_log_sigma_tilde(key, n, cfg):
    """Half EDM log-normal ``N(p_mean, p_std^2)``, half uniform on ``[log_st_min, log_st_max]``."""
    k1, k2, k3 = jax.random.split(key, 3)
    normal = cfg["p_mean"] + cfg["p_std"] * jax.random.normal(k1, (n,))
    uniform = jax.random.uniform(k2, (n,), minval=cfg["log_st_min"], maxval=cfg["log_st_max"])
    return jnp.where(jax.random.bernoulli(k3, 0.5, (n,)), normal, uniform)


def denoiser_loss(params, model, x0, key, mu, sigma_data, cfg):
    """EDM loss ``|F - (x0 - mu - c_skip r)/c_out|^2`` on VP-noised data, ``r = x - alpha mu``."""
    k_t, k_eps = jax.random.split(key)
    log_st = sample_log_sigma_tilde(k_t, x0.shape[0], cfg)[:, None]
    alpha = jax.lax.rsqrt(1.0 + jnp.exp(2.0 * log_st))  # VP: alpha^2 + sigma^2 = 1
    sigma = jnp.exp(log_st) * alpha
    x = alpha * x0 + sigma * jax.random.normal(k_eps, x0.shape)
    c_in, c_skip, c_out = edm_preconditioning(alpha, sigma, sigma_data)
    r = x - alpha * mu
    target = (x0 - mu - c_skip * r) / c_out
    f = model.apply({"params": params}, c_in * r, edm_c_noise(-log_st[:, 0]))
    return jnp.mean((f - target) ** 2)


def train_denoiser(cfg=DENOISER, out_dir=OUT_DIR):
    data = jnp.asarray(digits_data("all"), jnp.float32)
    mu = jnp.mean(data, axis=0)
    sigma_data = jnp.std(data - mu)
    model = DenoiserMLP(**cfg["model"])
    key = jax.random.key(cfg["seed"])
    key, k_init = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1, 64)), jnp.zeros((1,)))["params"]
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr_schedule(cfg)))
    print(f"denoiser: {n_params(params)} parameters, sigma_data={float(sigma_data):.4f}")

    def step(carry, k):
        params, ema, opt_state = carry
        k_b, k_l = jax.random.split(k)
        x0 = data[jax.random.randint(k_b, (cfg["batch"],), 0, data.shape[0])]
        loss, g = jax.value_and_grad(denoiser_loss)(params, model, x0, k_l, mu, sigma_data, cfg)
        updates, opt_state = opt.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: cfg["ema"] * e + (1.0 - cfg["ema"]) * p, ema, params)
        return (params, ema, opt_state), loss

    run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    carry = (params, params, opt.init(params))
    t0 = time.perf_counter()
    for i in range(cfg["steps"] // CHUNK):
        carry, losses = run(carry, jax.random.split(jax.random.fold_in(key, i), CHUNK))
        print(f"  step {(i + 1) * CHUNK:6d}  loss {float(jnp.mean(losses)):.4f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    ema = carry[1]
    eval_loss = float(jnp.mean(jnp.stack([
        denoiser_loss(ema, model, data, jax.random.key(10_000 + j), mu, sigma_data, cfg)
        for j in range(8)])))
    print(f"denoiser: EMA loss over all data {eval_loss:.4f}; trained in {seconds:.0f} s")
    state = {"params": ema, "data_mean": mu, "sigma_data": sigma_data}
    config = {"format_version": 1, "kind": "digits_denoiser", "model": cfg["model"],
              "parameterization": "edm_precond_x0", "sigma_data": float(sigma_data),
              "n_params": n_params(ema), "train": {k: v for k, v in cfg.items() if k != "model"},
              "final_ema_loss": eval_loss, "train_seconds": round(seconds, 1)}
    save_checkpoint(out_dir, "digits_denoiser", config, state)
    return config


# -- classifier --------------------------------------------------------------------------
def classifier_loss(params, model, x, y, key, cfg):
    k_noise, k_drop = jax.random.split(key)
    x = x + cfg["input_noise"] * jax.random.uniform(k_noise, (x.shape[0], 1)) \
        * jax.random.normal(jax.random.fold_in(k_noise, 1), x.shape)
    logits, _ = model.apply({"params": params}, x, dropout=cfg["dropout"], key=k_drop)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(model, params, x, y) -> float:
    logits, _ = model.apply({"params": params}, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def train_classifier(cfg=CLASSIFIER, out_dir=OUT_DIR):
    x_tr, y_tr = (jnp.asarray(a) for a in digits_data("train", return_labels=True))
    x_te, y_te = (jnp.asarray(a) for a in digits_data("test", return_labels=True))
    x_tr, x_te = x_tr.astype(jnp.float32), x_te.astype(jnp.float32)
    model = ClassifierMLP(**cfg["model"])
    key = jax.random.key(cfg["seed"])
    key, k_init = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1, 64)))["params"]
    opt = optax.adamw(optax.cosine_decay_schedule(cfg["lr"], cfg["steps"]),
                      weight_decay=cfg["weight_decay"])
    print(f"classifier: {n_params(params)} parameters")

    def step(carry, k):
        params, opt_state = carry
        k_b, k_l = jax.random.split(k)
        idx = jax.random.randint(k_b, (cfg["batch"],), 0, x_tr.shape[0])
        loss, g = jax.value_and_grad(classifier_loss)(params, model, x_tr[idx], y_tr[idx], k_l, cfg)
        updates, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    carry = (params, opt.init(params))
    t0 = time.perf_counter()
    for i in range(cfg["steps"] // CHUNK):
        carry, losses = run(carry, jax.random.split(jax.random.fold_in(key, i), CHUNK))
        print(f"  step {(i + 1) * CHUNK:6d}  loss {float(jnp.mean(losses)):.4f}  "
              f"test acc {accuracy(model, carry[0], x_te, y_te):.4f}", flush=True)
    seconds = time.perf_counter() - t0
    params = carry[0]
    acc_tr, acc_te = accuracy(model, params, x_tr, y_tr), accuracy(model, params, x_te, y_te)
    print(f"classifier: train acc {acc_tr:.4f}, test acc {acc_te:.4f}; trained in {seconds:.0f} s")
    config = {"format_version": 1, "kind": "digits_classifier", "model": cfg["model"],
              "n_params": n_params(params), "train": {k: v for k, v in cfg.items() if k != "model"},
              "train_accuracy": acc_tr, "test_accuracy": acc_te, "train_seconds": round(seconds, 1)}
    save_checkpoint(out_dir, "digits_classifier", config, {"params": params})
    return config


# -- report -----------------------------------------------------------------------------
def report(n_samples: int = 898, steps=(100, 50, 20, 10, 5)):
    """FD (classifier features) of DDIM samples, real halves and noise, at equal sizes."""
    from samplax.models.digits import load_digits_denoiser
    from samplax.models.digits_features import classifier_accuracy, frechet_distance
    from samplax.schedules.vp import VPLinear
    from samplax.solvers.ddim import ddim
    from samplax.solvers.executor import sample

    x = digits_data("all").astype(np.float32)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    half_a, half_b = x[perm[:n_samples]], x[perm[n_samples:2 * n_samples]]
    print(f"classifier test accuracy {classifier_accuracy('test'):.4f}")
    print(f"FD real half vs real half (n={n_samples}): {frechet_distance(half_a, half_b):.3f}")
    noise = np.random.default_rng(1).standard_normal(half_a.shape).astype(np.float32)
    print(f"FD N(0, I) vs real half: {frechet_distance(noise, half_a):.3f}")
    schedule = VPLinear()
    D = load_digits_denoiser(schedule)
    x_T = jax.random.normal(jax.random.key(123), (n_samples, 64), jnp.float32)
    for n in steps:
        lam = jnp.linspace(schedule.lam(1.0), schedule.lam(1e-3), n + 1)
        ts = schedule.t_of_lam(lam).at[0].set(1.0).at[-1].set(1e-3)
        out = np.asarray(jax.jit(sample, static_argnums=0)(D, ddim(schedule, ts), x_T))
        print(f"FD DDIM {n:3d} steps (logSNR-uniform) vs real half: "
              f"{frechet_distance(out, half_a):.3f}  (vs other half "
              f"{frechet_distance(out, half_b):.3f})", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["denoiser", "classifier"])
    p.add_argument("--report", action="store_true", help="only print the FD table")
    p.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
    a = p.parse_args(argv)
    if a.report:
        report()
        return
    if a.only in (None, "classifier"):
        train_classifier(out_dir=a.out)
    if a.only in (None, "denoiser"):
        train_denoiser(out_dir=a.out)
    if a.only is None and a.out == OUT_DIR:
        report()


if __name__ == "__main__":
    main()
