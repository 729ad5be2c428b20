"""Presets against independent numpy transcriptions of diffusers, ComfyUI and k-diffusion.

The transcriptions below were written from the sources, not from samplax.presets:
huggingface/diffusers ``src/diffusers/schedulers/scheduling_*.py`` (``set_timesteps``,
``_sigma_to_t``, ``_convert_to_karras``, ``step``), ComfyUI ``comfy/samplers.py``
(``calculate_sigmas`` and its scheduler handlers, ``KSampler``/``KSAMPLER``),
``comfy/model_sampling.py`` (``ModelSamplingDiscrete``), ``comfy/extra_samplers/uni_pc.py``
and crowsonkb/k-diffusion ``k_diffusion/sampling.py``. They run in float64; the tools keep
their sigma tables in float32 (``.astype(np.float32)``, ``torch.float32``), so the tools'
own numbers differ from these by ~1e-7 relative.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import samplax
from samplax import presets
from samplax.models.adapters import from_epsilon, from_flow, from_prediction
from samplax.schedules import RectifiedFlow

N = 1000
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
MU = np.array([0.5, -1.0, 2.0])
S_DATA = 0.7
NOISE = np.random.default_rng(0).standard_normal((2, 3))


# --------------------------------------------------------------------------------------
# Transcriptions: noise tables and step schedules
# --------------------------------------------------------------------------------------


def betas_for(kind):
    if kind == "scaled_linear":
        return np.linspace(0.00085**0.5, 0.012**0.5, N) ** 2
    if kind == "linear":
        return np.linspace(0.0001, 0.02, N)
    # betas_for_alpha_bar(alpha_transform_type="cosine")
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / N) / f(i / N), 0.999) for i in range(N)])


def alphas_cumprod(kind="scaled_linear"):
    return np.cumprod(1.0 - betas_for(kind))


def train_sigmas(kind="scaled_linear"):
    ac = alphas_cumprod(kind)
    return ((1 - ac) / ac) ** 0.5


def sigma_to_t(sigma, log_sigmas):
    """diffusers ``_sigma_to_t`` for one sigma."""
    log_sigma = np.log(max(sigma, 1e-10))
    dists = log_sigma - log_sigmas
    low = min(int(np.cumsum(dists >= 0).argmax()), len(log_sigmas) - 2)
    w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def karras(n, s_min, s_max, rho=7.0):
    ramp = np.linspace(0, 1, n)
    return (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


def multistep_set_timesteps(sig, n, spacing="linspace", offset=0, last=N, sigmas_kind="none",
                            final="zero", round_labels=True):
    """DPMSolverMultistep / UniPC / DEIS ``set_timesteps`` -> (sigmas incl. final, labels)."""
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = last // (n + 1)
        ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + offset
    else:
        ts = np.arange(last, 0, -N / n).round().copy().astype(np.int64) - 1
    log_sigmas = np.log(sig)
    if sigmas_kind == "none":
        sigmas = np.interp(ts, np.arange(0, len(sig)), sig)
        last_sigma = sig[0] if final == "sigma_min" else 0.0
    else:
        flipped = np.flip(sig)
        if sigmas_kind == "karras":
            sigmas = karras(n, flipped[-1], flipped[0])
        elif sigmas_kind == "exponential":
            sigmas = np.exp(np.linspace(math.log(flipped[0]), math.log(flipped[-1]), n))
        else:  # _convert_to_lu on flip(log_sigmas), rho = 1
            lams = np.flip(log_sigmas)
            sigmas = np.exp(lams[0] + np.linspace(0, 1, n) * (lams[-1] - lams[0]))
        ts = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        if round_labels:
            ts = ts.round()
        last_sigma = {"zero": 0.0, "sigma_min": sig[0], "dup": sigmas[-1]}[final]
    return np.concatenate([sigmas, [last_sigma]]), ts.astype(np.int64).astype(float)


def euler_set_timesteps(sig, n, spacing="linspace", offset=0, karras_sigmas=False,
                        final="zero"):
    """EulerDiscrete / EulerAncestral / Heun ``set_timesteps`` (float labels)."""
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n)[::-1].copy()
    elif spacing == "leading":
        ts = (np.arange(0, n) * (N // n)).round()[::-1].copy() + offset
    else:
        ts = np.arange(N, 0, -N / n).round().copy() - 1
    log_sigmas = np.log(sig)
    sigmas = np.interp(ts, np.arange(0, len(sig)), sig)
    if karras_sigmas:
        sigmas = karras(n, sigmas[-1], sigmas[0])
        ts = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
    last = sig[0] if final == "sigma_min" else 0.0
    return np.concatenate([sigmas, [last]]), ts


def comfy_calculate_sigmas(name, sig, steps):
    """ComfyUI ``calculate_sigmas`` with ``ModelSamplingDiscrete`` (training sigmas ``sig``)."""
    n_sig = len(sig)
    log_sigmas = np.log(sig)
    sigma_min, sigma_max = sig[0], sig[-1]

    def ms_sigma(timestep):
        t = min(max(float(timestep), 0.0), n_sig - 1)
        lo, hi = math.floor(t), math.ceil(t)
        w = t - lo
        return math.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[hi])

    def ms_timestep(sigma):
        return int(np.abs(math.log(sigma) - log_sigmas).argmin())

    if name in ("normal", "sgm_uniform"):
        start, end = ms_timestep(sigma_max), ms_timestep(sigma_min)
        if name == "sgm_uniform":
            timesteps = np.linspace(start, end, steps + 1)[:-1]
        else:
            timesteps = np.linspace(start, end, steps)
        return np.array([ms_sigma(t) for t in timesteps] + [0.0])
    if name == "simple":
        ss = n_sig / steps
        return np.array([sig[-(1 + int(x * ss))] for x in range(steps)] + [0.0])
    if name == "ddim_uniform":
        sigs, x, ss = [0.0], 1, max(n_sig // steps, 1)
        while x < n_sig:
            sigs.append(sig[x])
            x += ss
        return np.array(sigs[::-1])
    if name == "karras":
        return np.append(karras(steps, sigma_min, sigma_max), 0.0)
    if name == "exponential":
        return np.append(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps)), 0)
    if name == "kl_optimal":
        adj = np.arange(steps) / (steps - 1)
        return np.append(np.tan(adj * math.atan(sigma_min) + (1 - adj) * math.atan(sigma_max)), 0)
    if name == "beta":
        import scipy.stats

        ts = 1 - np.linspace(0, 1, steps, endpoint=False)
        ts = np.rint(scipy.stats.beta.ppf(ts, 0.6, 0.6) * (n_sig - 1))
        sigs, last_t = [], -1
        for t in ts:
            if t != last_t:
                sigs += [sig[int(t)]]
            last_t = t
        return np.array(sigs + [0.0])
    if name == "linear_quadratic":  # threshold_noise=0.025, linear_steps=steps // 2
        threshold_noise, linear_steps = 0.025, steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const
                     for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
        return np.array(schedule) * sigma_max
    raise AssertionError(name)


# --------------------------------------------------------------------------------------
# Gaussian data: exact noise / velocity predictions at the label the tool hands the network
# --------------------------------------------------------------------------------------


def eps_np(x, label, sig):
    st = np.interp(label, np.arange(len(sig)), sig)
    a = 1 / np.sqrt(1 + st**2)
    s = st * a
    return s * (x - a * MU) / (a * a * S_DATA**2 + s * s)


def eps_jax(sig):
    sig_j, ar = jnp.asarray(sig), jnp.arange(len(sig), dtype=jnp.float64)
    mu = jnp.asarray(MU)

    def model(x, label):
        st = jnp.interp(label, ar, sig_j)
        a = 1 / jnp.sqrt(1 + st**2)
        s = st * a
        return s * (x - a * mu) / (a * a * S_DATA**2 + s * s)

    return model


def velocity(x, timestep, xp=np):
    t = timestep / N
    a, s = 1 - t, t
    var = a * a * S_DATA**2 + s * s
    mu = xp.asarray(MU)
    return s * (x - a * mu) / var - (mu + a * S_DATA**2 * (x - a * mu) / var)


def run_samplax(p, model, flow=False):
    make = from_flow if flow else from_epsilon
    den = make(model, p.schedule, time_input=p.time_input)
    out = samplax.sample(den, p.plan, p.init_noise_sigma * jnp.asarray(NOISE))
    return np.asarray(out) * p.output_scale


def nearest(s, sig):
    return int(np.abs(math.log(s) - np.log(sig)).argmin())


def _a_s(sg):
    a = 1 / np.sqrt(sg**2 + 1)
    return a, sg * a


def _lam(sg):
    a, s = _a_s(sg)
    with np.errstate(divide="ignore"):
        return np.log(a) - np.log(s)


# --------------------------------------------------------------------------------------
# Transcriptions: diffusers' step loops
# --------------------------------------------------------------------------------------


def dpm_multistep_loop(sigmas, labels, sig, order=2, solver_type="midpoint", lof=True,
                       final_zero=True, algo="dpmsolver++"):
    """DPMSolverMultistepScheduler.step (convert_model_output, first/second/third order)."""
    x, outs, lower, n = NOISE.copy(), [], 0, len(labels)
    for i in range(n):
        e = eps_np(x, labels[i], sig)
        a0, s0 = _a_s(sigmas[i])
        outs.append((x - s0 * e) / a0 if algo == "dpmsolver++" else e)
        lof_ = i == n - 1 and ((lof and n < 15) or final_zero)
        los = i == n - 2 and lof and n < 15
        if order == 1 or lower < 1 or lof_:
            k = 1
        elif order == 2 or lower < 2 or los:
            k = 2
        else:
            k = 3
        at, st = _a_s(sigmas[i + 1])
        l_t, l_0 = _lam(sigmas[i + 1]), _lam(sigmas[i])
        h = l_t - l_0
        pp = algo == "dpmsolver++"
        with np.errstate(divide="ignore", invalid="ignore"):
            if k == 1:
                if pp:
                    x = (st / s0) * x - (at * (np.exp(-h) - 1.0)) * outs[-1]
                else:
                    x = (at / a0) * x - (st * (np.exp(h) - 1.0)) * outs[-1]
            elif k == 2:
                h_0 = l_0 - _lam(sigmas[i - 1])
                r0 = h_0 / h
                D0, D1 = outs[-1], (1.0 / r0) * (outs[-1] - outs[-2])
                if pp and solver_type == "midpoint":
                    x = ((st / s0) * x - (at * (np.exp(-h) - 1.0)) * D0
                         - 0.5 * (at * (np.exp(-h) - 1.0)) * D1)
                elif pp:
                    x = ((st / s0) * x - (at * (np.exp(-h) - 1.0)) * D0
                         + (at * ((np.exp(-h) - 1.0) / h + 1.0)) * D1)
                elif solver_type == "midpoint":
                    x = ((at / a0) * x - (st * (np.exp(h) - 1.0)) * D0
                         - 0.5 * (st * (np.exp(h) - 1.0)) * D1)
                else:
                    x = ((at / a0) * x - (st * (np.exp(h) - 1.0)) * D0
                         - (st * ((np.exp(h) - 1.0) / h - 1.0)) * D1)
            else:
                h_0 = l_0 - _lam(sigmas[i - 1])
                h_1 = _lam(sigmas[i - 1]) - _lam(sigmas[i - 2])
                r0, r1 = h_0 / h, h_1 / h
                m0, m1, m2 = outs[-1], outs[-2], outs[-3]
                D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
                x = ((st / s0) * x - (at * (np.exp(-h) - 1.0)) * m0
                     + (at * ((np.exp(-h) - 1.0) / h + 1.0)) * D1
                     - (at * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2)
        lower = min(lower + 1, order)
    return x


def _unipc_weights(rks, h, order, variant):
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact = 1
    B_h = hh if variant == "bh1" else np.expm1(hh)
    R, b = [], []
    for k in range(1, order + 1):
        R.append(np.power(rks, k - 1))
        b.append(h_phi_k * fact / B_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return np.array(R), np.array(b), h_phi_1, B_h


def unipc_loop(sigmas, labels, sig, order=2, variant="bh2", lof=True, disable=()):
    """UniPCMultistepScheduler.step (predict_x0): UniC then UniP, diffusers' orders.

    Also ComfyUI's ``uni_pc`` (official ``multistep_uni_pc_bh_update``, same formulas)."""
    x, outs, last_sample, this_order, lower, n = NOISE.copy(), [], None, None, 0, len(labels)
    for i in range(n):
        e = eps_np(x, labels[i], sig)
        a, s = _a_s(sigmas[i])
        m = (x - s * e) / a
        if i > 0 and (i - 1) not in disable and last_sample is not None:
            # multistep_uni_c_bh_update: t = sigmas[i], s0 = sigmas[i - 1]
            at, st = _a_s(sigmas[i])
            _, s0 = _a_s(sigmas[i - 1])
            h = _lam(sigmas[i]) - _lam(sigmas[i - 1])
            m0 = outs[-1]
            rks, D1s = [], []
            for k in range(1, this_order):
                rk = (_lam(sigmas[i - (k + 1)]) - _lam(sigmas[i - 1])) / h
                rks.append(rk)
                D1s.append((outs[-(k + 1)] - m0) / rk)
            R, b, h_phi_1, B_h = _unipc_weights(np.array(rks + [1.0]), h, this_order, variant)
            rhos_c = np.array([0.5]) if this_order == 1 else np.linalg.solve(R, b)
            corr = sum(r * d for r, d in zip(rhos_c[:-1], D1s, strict=True)) if D1s else 0
            x = (st / s0 * last_sample - at * h_phi_1 * m0
                 - at * B_h * (corr + rhos_c[-1] * (m - m0)))
        outs.append(m)
        this_order = min(order, n - i) if lof else order
        this_order = min(this_order, lower + 1)
        last_sample = x
        # multistep_uni_p_bh_update: t = sigmas[i + 1], s0 = sigmas[i]
        at, st = _a_s(sigmas[i + 1])
        _, s0 = _a_s(sigmas[i])
        with np.errstate(divide="ignore", invalid="ignore"):
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            rks, D1s = [], []
            for k in range(1, this_order):
                rk = (_lam(sigmas[i - k]) - _lam(sigmas[i])) / h
                rks.append(rk)
                D1s.append((outs[-(k + 1)] - m) / rk)
            R, b, h_phi_1, B_h = _unipc_weights(np.array(rks + [1.0]), h, this_order, variant)
        pred = 0
        if D1s:
            rhos_p = np.array([0.5]) if this_order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            pred = sum(r * d for r, d in zip(rhos_p, D1s, strict=True))
        x = st / s0 * x - at * h_phi_1 * m - at * B_h * pred
        lower = min(lower + 1, order)
    return x


def deis_loop(sigmas, labels, sig, order=3, lof=True):
    """DEISMultistepScheduler.step (log-rho, ``ind_fn``)."""
    x, outs, lower, n = NOISE.copy(), [], 0, len(labels)
    for i in range(n):
        e = eps_np(x, labels[i], sig)
        a0, s0 = _a_s(sigmas[i])
        x0 = (x - s0 * e) / a0
        outs.append((x - a0 * x0) / s0)
        lof_ = i == n - 1 and lof and n < 15
        los = i == n - 2 and lof and n < 15
        if order == 1 or lower < 1 or lof_:
            k = 1
        elif order == 2 or lower < 2 or los:
            k = 2
        else:
            k = 3
        at, st = _a_s(sigmas[i + 1])
        if k == 1:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            x = (at / a0) * x - (st * (np.exp(h) - 1.0)) * outs[-1]
        elif k == 2:
            rt, r0, r1 = sigmas[i + 1], sigmas[i], sigmas[i - 1]  # rho = sigma/alpha

            def ind2(t, b, c):
                return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))

            c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1)
            c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0)
            x = at * (x / a0 + c1 * outs[-1] + c2 * outs[-2])
        else:
            rt, r0, r1, r2 = sigmas[i + 1], sigmas[i], sigmas[i - 1], sigmas[i - 2]

            def ind3(t, b, c, d):
                num = t * (np.log(c) * (np.log(d) - np.log(t) + 1) - np.log(d) * np.log(t)
                           + np.log(d) + np.log(t) ** 2 - 2 * np.log(t) + 2)
                return num / ((np.log(b) - np.log(c)) * (np.log(b) - np.log(d)))

            c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2)
            c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0)
            c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1)
            x = at * (x / a0 + c1 * outs[-1] + c2 * outs[-2] + c3 * outs[-3])
        lower = min(lower + 1, order)
    return x


def euler_loop(sigmas, labels, sig, init):
    """EulerDiscreteScheduler: latents * init_noise_sigma, scale_model_input, step."""
    x = NOISE * init
    for i in range(len(labels)):
        sigma = sigmas[i]
        e = eps_np(x / ((sigma**2 + 1) ** 0.5), labels[i], sig)
        x0 = x - sigma * e
        x = x + (x - x0) / sigma * (sigmas[i + 1] - sigma)
    return x


def heun_loop(sigmas, labels, sig, init):
    """HeunDiscreteScheduler with its doubled tables (state_in_first_order)."""
    sig_t = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
    ts = np.concatenate([labels[:1], np.repeat(labels[1:], 2)])
    x, dt, prev_d, sample = NOISE * init, None, None, None
    for k in range(len(ts)):
        first = dt is None
        e = eps_np(x / ((sig_t[k] ** 2 + 1) ** 0.5), ts[k], sig)
        if first:
            sigma, sigma_next = sig_t[k], sig_t[k + 1]
            x0 = x - sigma * e
            d = (x - x0) / sigma
            dt, prev_d, sample = sigma_next - sigma, d, x
            x = x + d * dt
        else:
            sigma_next = sig_t[k]
            x0 = x - sigma_next * e
            d = ((x - x0) / sigma_next + prev_d) / 2
            x = sample + d * dt
            dt = prev_d = sample = None
    return x


def ddim_loop(ts, ac, n, final):
    """DDIMScheduler.step, eta = 0: prev_timestep = timestep - N // n."""
    sig = ((1 - ac) / ac) ** 0.5
    x = NOISE.copy()
    for t in ts:
        e = eps_np(x, t, sig)
        prev = t - N // n
        a_prev = ac[prev] if prev >= 0 else final
        x0 = (x - (1 - ac[t]) ** 0.5 * e) / ac[t] ** 0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * e
    return x


# --------------------------------------------------------------------------------------
# (a) noise levels, labels and the network-time function
# --------------------------------------------------------------------------------------


def check_tables(p, sigmas, labels, tol=1e-10):
    np.testing.assert_allclose(p.sigmas, sigmas, rtol=tol, atol=0)
    np.testing.assert_allclose(p.model_labels, labels, rtol=0, atol=tol * N)
    # the plan's times have the tool's noise levels ...
    st = np.exp(-np.asarray(p.schedule.lam(p.timesteps)))
    np.testing.assert_allclose(st, sigmas, rtol=tol, atol=0)
    # ... and time_input gives the network what the tool gives it
    np.testing.assert_allclose(np.asarray(p.time_input(p.plan.t)), p.model_labels, rtol=0,
                               atol=tol * N)


DPM = "DPMSolverMultistepScheduler"


@pytest.mark.parametrize(
    "n, options, expect",
    [
        (20, {}, {}),
        (10, dict(timestep_spacing="leading", steps_offset=1), dict(spacing="leading", offset=1)),
        (7, dict(timestep_spacing="trailing"), dict(spacing="trailing")),
        (20, dict(use_karras_sigmas=True), dict(sigmas_kind="karras")),
        (12, dict(use_lu_lambdas=True), dict(sigmas_kind="lu")),
        (9, dict(use_exponential_sigmas=True),
         dict(sigmas_kind="exponential", round_labels=False)),
        (10, dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
         dict(final="sigma_min")),
    ],
)
def test_dpm_solver_tables(n, options, expect):
    p = presets.diffusers_preset(DPM, n, **SD, **options)
    sigmas, labels = multistep_set_timesteps(train_sigmas(), n, **expect)
    check_tables(p, sigmas, labels)
    assert p.plan.nfe == n and p.init_noise_sigma == 1.0 and p.output_scale == 1.0


def test_dpm_solver_cosine_karras_truncates_labels():
    # squaredcos_cap_v2: diffusers does not round the karras labels; int64 truncates them
    p = presets.diffusers_preset(DPM, 10, beta_schedule="squaredcos_cap_v2",
                                 use_karras_sigmas=True)
    sigmas, labels = multistep_set_timesteps(train_sigmas("cosine"), 10, sigmas_kind="karras",
                                             round_labels=False)
    check_tables(p, sigmas, labels)


def test_dpm_solver_lambda_min_clipped():
    p = presets.diffusers_preset(DPM, 10, beta_schedule="squaredcos_cap_v2",
                                 lambda_min_clipped=-5.1)
    ac = alphas_cumprod("cosine")
    lam = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))
    last = N - int(np.searchsorted(np.flip(lam), -5.1))
    assert last < N
    sigmas, labels = multistep_set_timesteps(train_sigmas("cosine"), 10, last=last)
    check_tables(p, sigmas, labels)


def test_dpm_solver_karras_sigma_min_drops_the_zero_length_step():
    # diffusers appends sigma_min after karras sigmas that already end there: its last
    # step has h = 0 and changes nothing (midpoint), so the plan has one evaluation less
    p = presets.diffusers_preset(DPM, 10, **SD, use_karras_sigmas=True,
                                 final_sigmas_type="sigma_min")
    sigmas, labels = multistep_set_timesteps(train_sigmas(), 10, sigmas_kind="karras",
                                             final="sigma_min")
    assert sigmas[-1] == pytest.approx(sigmas[-2], rel=1e-12)
    check_tables(p, sigmas[:-1], labels[:-1])
    assert p.plan.nfe == 9 and "dropped" in p.describe


@pytest.mark.parametrize(
    "options, expect",
    [
        (dict(use_karras_sigmas=True), dict(sigmas_kind="karras")),
        (dict(final_sigmas_type="sigma_min", solver_type="bh1"), dict(final="sigma_min")),
        (dict(use_exponential_sigmas=True),
         dict(sigmas_kind="exponential", round_labels=False)),
    ],
)
def test_unipc_tables(options, expect):
    p = presets.diffusers_preset("UniPCMultistepScheduler", 10, **SD, **options)
    check_tables(p, *multistep_set_timesteps(train_sigmas(), 10, **expect))


def test_deis_tables():
    p = presets.diffusers_preset("DEISMultistepScheduler", 10, **SD)
    check_tables(p, *multistep_set_timesteps(train_sigmas(), 10, final="sigma_min"))
    # karras: diffusers repeats the last sigma (a zero-length, no-op step): dropped
    p = presets.diffusers_preset("DEISMultistepScheduler", 10, **SD, use_karras_sigmas=True)
    sigmas, labels = multistep_set_timesteps(train_sigmas(), 10, sigmas_kind="karras",
                                             final="dup")
    check_tables(p, sigmas[:-1], labels[:-1])


@pytest.mark.parametrize(
    "options, expect",
    [
        ({}, {}),
        (dict(timestep_spacing="leading", steps_offset=1), dict(spacing="leading", offset=1)),
        (dict(timestep_spacing="trailing"), dict(spacing="trailing")),
        (dict(use_karras_sigmas=True), dict(karras_sigmas=True)),
    ],
)
def test_euler_tables(options, expect):
    sig = train_sigmas()
    p = presets.diffusers_preset("EulerDiscreteScheduler", 10, **SD, **options)
    sigmas, labels = euler_set_timesteps(sig, 10, **expect)
    check_tables(p, sigmas, labels)
    # init_noise_sigma (x/alpha units): max sigma for linspace/trailing, else sqrt(max^2 + 1)
    smax = sigmas.max()
    init = smax if options.get("timestep_spacing", "linspace") != "leading" else (smax**2 + 1) ** .5
    assert p.init_noise_sigma == pytest.approx(init / (1 + sigmas[0] ** 2) ** 0.5, rel=1e-12)


def test_euler_sigma_min_and_continuous_timesteps():
    sig = train_sigmas()
    p = presets.diffusers_preset("EulerDiscreteScheduler", 10, **SD, final_sigmas_type="sigma_min")
    sigmas, labels = euler_set_timesteps(sig, 10, final="sigma_min")
    # linspace ends at label 0 = sigma_min: the appended sigma_min repeats it (dt = 0), so
    # the last step (and its network call at label 0) is dropped
    check_tables(p, sigmas[:-1], labels[:-1])
    assert p.output_scale == pytest.approx((1 + sig[0] ** 2) ** 0.5, rel=1e-12)
    p = presets.diffusers_preset("EulerDiscreteScheduler", 10, **SD, timestep_type="continuous",
                                 prediction_type="v_prediction")
    sigmas, _ = euler_set_timesteps(sig, 10)
    check_tables(p, sigmas, 0.25 * np.log(sigmas[:-1]))


def test_heun_and_ancestral_tables():
    sig = train_sigmas()
    p = presets.diffusers_preset("HeunDiscreteScheduler", 8, **SD, use_karras_sigmas=True)
    sigmas, labels = euler_set_timesteps(sig, 8, karras_sigmas=True)
    np.testing.assert_allclose(p.sigmas, sigmas, rtol=1e-10)
    heun_labels = np.concatenate([labels[:1], np.repeat(labels[1:], 2)])
    np.testing.assert_allclose(p.model_labels, heun_labels, atol=1e-8)
    np.testing.assert_allclose(np.asarray(p.time_input(p.plan.t)), heun_labels, atol=1e-8)
    p = presets.diffusers_preset("EulerAncestralDiscreteScheduler", 8, **SD)
    check_tables(p, *euler_set_timesteps(sig, 8))
    assert p.plan.stochastic


@pytest.mark.parametrize(
    "options",
    [dict(timestep_spacing="linspace"), dict(timestep_spacing="leading", steps_offset=1),
     dict(timestep_spacing="trailing", set_alpha_to_one=False)],
)
def test_ddim_tables(options):
    n = 12
    p = presets.diffusers_preset("DDIMScheduler", n, **SD, clip_sample=False, **options)
    sig = train_sigmas()
    sp = options["timestep_spacing"]
    if sp == "linspace":
        ts = np.linspace(0, N - 1, n).round()[::-1].astype(np.int64)
    elif sp == "leading":
        ts = (np.arange(0, n) * (N // n)).round()[::-1].astype(np.int64) + 1
    else:
        ts = np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1
    final = 0.0 if options.get("set_alpha_to_one", True) else sig[0]
    check_tables(p, np.append(sig[ts], final), ts.astype(float))


@pytest.mark.parametrize(
    "options, mu",
    [(dict(shift=3.0), None), (dict(use_dynamic_shifting=True), 0.8),
     (dict(shift=3.0, shift_terminal=0.1), None), (dict(shift=2.0, use_karras_sigmas=True), None)],
)
def test_flow_match_tables(options, mu):
    n = 9
    p = presets.diffusers_preset("FlowMatchEulerDiscreteScheduler", n, mu=mu, **options)
    k = math.exp(mu) if mu is not None else options.get("shift", 1.0)
    shift = lambda s, k: k * s / (1 + (k - 1) * s)
    # __init__ shifts linspace(1, N, N)/N (unless dynamic): sigma_min = shift(1/N)
    s_min = 1 / N if mu is not None else shift(1 / N, k)
    sigmas = shift(np.linspace(1.0, s_min, n), k)
    if options.get("shift_terminal"):
        one_minus_z = 1 - sigmas
        sigmas = 1 - one_minus_z / (one_minus_z[-1] / (1 - options["shift_terminal"]))
    if options.get("use_karras_sigmas"):
        sigmas = karras(n, sigmas[-1], sigmas[0])
    np.testing.assert_allclose(p.sigmas, np.append(sigmas, 0.0), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(p.timesteps), p.sigmas, rtol=1e-12)  # t = sigma
    np.testing.assert_allclose(p.model_labels, sigmas * N, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(p.time_input(p.plan.t)), sigmas * N, rtol=1e-10)


@pytest.mark.parametrize("scheduler, steps", [
    ("normal", 10), ("karras", 13), ("exponential", 13), ("sgm_uniform", 9), ("simple", 13),
    ("ddim_uniform", 13), ("kl_optimal", 13), ("beta", 13), ("linear_quadratic", 13)])
def test_comfyui_scheduler_tables(scheduler, steps):
    # (normal/sgm_uniform step counts whose labels avoid x.5: there the nearest label is a
    # tie, decided by float32 rounding in ComfyUI)
    sig = train_sigmas()
    p = presets.comfyui_preset("euler", scheduler, steps)
    sigmas = comfy_calculate_sigmas(scheduler, sig, steps)
    labels = [nearest(s, sig) for s in sigmas[:-1]]  # ModelSamplingDiscrete.timestep
    check_tables(p, sigmas, labels)
    # KSAMPLER.sample: noise * sqrt(1 + s0^2) if sigma_0 is sigma_max (max_denoise), else
    # noise * s0, in x/alpha units: 1 or s0 alpha_0 in samplax's state
    s0 = sigmas[0]
    expect = 1.0 if math.isclose(s0, sig[-1], rel_tol=1e-5) else s0 / (1 + s0**2) ** 0.5
    assert p.init_noise_sigma == pytest.approx(expect, rel=1e-12)


def test_comfyui_discards_penultimate_sigma():
    sig = train_sigmas()
    full = comfy_calculate_sigmas("karras", sig, 11)
    p = presets.comfyui_preset("dpm_2", "karras", 10)
    np.testing.assert_allclose(p.sigmas, np.concatenate([full[:-2], full[-1:]]), rtol=1e-10)
    p = presets.comfyui_preset("uni_pc", "karras", 10)
    expect = np.concatenate([full[:-2], [0.001]])  # sample_unipc: sigma 0 -> 0.001
    check_tables(p, expect, [nearest(s, sig) for s in expect[:-1]])


# --------------------------------------------------------------------------------------
# (b) whole sampling loops against the tools' step loops, Gaussian data
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, options",
    [
        (10, {}),
        (20, dict(use_karras_sigmas=True)),
        (8, dict(use_karras_sigmas=True, solver_order=3, solver_type="heun")),
        (16, dict(solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False)),
        (9, dict(algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min")),
    ],
)
def test_dpm_solver_samples(n, options):
    sig = train_sigmas()
    p = presets.diffusers_preset(DPM, n, **SD, **options)
    kind = "karras" if options.get("use_karras_sigmas") else "none"
    final = options.get("final_sigmas_type", "zero")
    sigmas, labels = multistep_set_timesteps(sig, n, sigmas_kind=kind, final=final)
    ref = dpm_multistep_loop(sigmas, labels, sig, order=options.get("solver_order", 2),
                             solver_type=options.get("solver_type", "midpoint"),
                             lof=options.get("lower_order_final", True),
                             final_zero=final == "zero",
                             algo=options.get("algorithm_type", "dpmsolver++"))
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize(
    "n, options",
    [(10, dict(use_karras_sigmas=True)),
     (12, dict(use_karras_sigmas=True, solver_order=3, disable_corrector=[0, 4])),
     (8, dict(solver_type="bh1", final_sigmas_type="sigma_min"))],
)
def test_unipc_samples(n, options):
    sig = train_sigmas()
    p = presets.diffusers_preset("UniPCMultistepScheduler", n, **SD, **options)
    kind = "karras" if options.get("use_karras_sigmas") else "none"
    sigmas, labels = multistep_set_timesteps(sig, n, sigmas_kind=kind,
                                             final=options.get("final_sigmas_type", "zero"))
    ref = unipc_loop(sigmas, labels, sig, order=options.get("solver_order", 2),
                     variant=options.get("solver_type", "bh2"),
                     disable=options.get("disable_corrector", ()))
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


def test_deis_samples():
    sig = train_sigmas()
    p = presets.diffusers_preset("DEISMultistepScheduler", 10, **SD, solver_order=3)
    sigmas, labels = multistep_set_timesteps(sig, 10, final="sigma_min")
    ref = deis_loop(sigmas, labels, sig, order=3)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("options", [{}, dict(timestep_spacing="leading", steps_offset=1)])
def test_euler_samples(options):
    sig = train_sigmas()
    p = presets.diffusers_preset("EulerDiscreteScheduler", 10, **SD, **options)
    spacing = options.get("timestep_spacing", "linspace")
    sigmas, labels = euler_set_timesteps(sig, 10, spacing=spacing, offset=1)
    smax = sigmas.max()
    init = smax if spacing == "linspace" else (smax**2 + 1) ** 0.5
    ref = euler_loop(sigmas, labels, sig, init)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


def test_heun_samples():
    sig = train_sigmas()
    p = presets.diffusers_preset("HeunDiscreteScheduler", 6, **SD, use_karras_sigmas=True)
    sigmas, labels = euler_set_timesteps(sig, 6, karras_sigmas=True)
    ref = heun_loop(sigmas, labels, sig, sigmas.max())
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_ddim_samples(spacing):
    n = 10
    sig, ac = train_sigmas(), alphas_cumprod()
    p = presets.diffusers_preset("DDIMScheduler", n, **SD, clip_sample=False,
                                 timestep_spacing=spacing, steps_offset=1)
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n).round()[::-1].astype(np.int64)
    else:
        ts = (np.arange(0, n) * (N // n)).round()[::-1].astype(np.int64) + 1
    ref = ddim_loop(ts, ac, n, final=1.0)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), ref, atol=1e-8, rtol=0)


def test_ddim_zero_terminal_snr_v_prediction_samples():
    # rescale_betas_zero_snr: alpha_bar[-1] = 0 exactly; trailing spacing starts there, where
    # only a v (or x0) prediction is finite; the plan starts at alpha = 0 (t = 1)
    n = 10
    betas = betas_for("scaled_linear")
    sab = np.sqrt(np.cumprod(1 - betas))
    s0, sT = sab[0], sab[-1]
    sab = (sab - sT) * (s0 / (s0 - sT))
    ab = sab**2
    ac = np.cumprod(1 - (1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])))
    assert ac[-1] == 0.0

    def v_np(x, t):
        a, s = ac[t] ** 0.5, (1 - ac[t]) ** 0.5
        var = a * a * S_DATA**2 + s * s
        return a * (s * (x - a * MU) / var) - s * (MU + a * S_DATA**2 * (x - a * MU) / var)

    x = NOISE.copy()
    for t in np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1:
        v = v_np(x, t)
        x0 = ac[t] ** 0.5 * x - (1 - ac[t]) ** 0.5 * v
        e = ac[t] ** 0.5 * v + (1 - ac[t]) ** 0.5 * x
        prev = t - N // n
        a_prev = ac[prev] if prev >= 0 else 1.0
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * e
    p = presets.diffusers_preset("DDIMScheduler", n, **SD, clip_sample=False,
                                 timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                 prediction_type="v_prediction")
    assert float(p.plan.alpha[0]) == 0.0 and p.prediction_type == "v_prediction"
    ac_j, mu = jnp.asarray(ac), jnp.asarray(MU)

    def v_jax(x, label):
        t = jnp.round(label).astype(jnp.int32)
        a, s = ac_j[t] ** 0.5, (1 - ac_j[t]) ** 0.5
        var = a * a * S_DATA**2 + s * s
        return a * (s * (x - a * mu) / var) - s * (mu + a * S_DATA**2 * (x - a * mu) / var)

    den = from_prediction(v_jax, p.schedule, p.prediction_type, time_input=p.time_input)
    out = samplax.sample(den, p.plan, p.init_noise_sigma * jnp.asarray(NOISE))
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-8, rtol=0)


def test_flow_match_samples():
    n = 8
    p = presets.diffusers_preset("FlowMatchEulerDiscreteScheduler", n, shift=3.0)
    shift = lambda s: 3 * s / (1 + 2 * s)
    sigmas = np.append(shift(np.linspace(1.0, shift(1 / N), n)), 0.0)
    x = NOISE.copy()  # pipelines start from randn at sigma = 1
    for i in range(n):
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, sigmas[i] * N)
    model = lambda x, ts: velocity(x, ts, jnp)
    assert isinstance(p.schedule, RectifiedFlow) and p.prediction_type == "flow"
    np.testing.assert_allclose(run_samplax(p, model, flow=True), x, atol=1e-8, rtol=0)


def comfy_denoised(x, sigma, sig):
    """ComfyUI EPS model: calculate_input, the network at timestep(sigma), calculate_denoised."""
    return x - sigma * eps_np(x / (sigma**2 + 1) ** 0.5, nearest(sigma, sig), sig)


def test_comfyui_dpmpp_2m_karras_samples():
    sig = train_sigmas()
    sigmas = comfy_calculate_sigmas("karras", sig, 12)
    x = NOISE * (1 + sigmas[0] ** 2) ** 0.5  # noise_scaling, max_denoise
    old = None
    for i in range(len(sigmas) - 1):  # k-diffusion sample_dpmpp_2m
        den = comfy_denoised(x, sigmas[i], sig)
        t, t_next = -math.log(sigmas[i]), (-math.log(sigmas[i + 1]) if sigmas[i + 1] else math.inf)
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * den
        else:
            r = (t + math.log(sigmas[i - 1])) / h
            den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * den_d
        old = den
    p = presets.comfyui_preset("dpmpp_2m", "karras", 12)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), x, atol=1e-8, rtol=0)


def test_comfyui_dpm_2_and_heun_samples():
    sig = train_sigmas()
    full = comfy_calculate_sigmas("normal", sig, 8)
    sigmas = np.concatenate([full[:-2], full[-1:]])  # DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    x = NOISE * (1 + sigmas[0] ** 2) ** 0.5
    for i in range(len(sigmas) - 1):  # k-diffusion sample_dpm_2
        d = (x - comfy_denoised(x, sigmas[i], sig)) / sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            s_mid = math.exp(math.log(sigmas[i]) + 0.5 * (math.log(sigmas[i + 1])
                                                          - math.log(sigmas[i])))
            x_2 = x + d * (s_mid - sigmas[i])
            d_2 = (x_2 - comfy_denoised(x_2, s_mid, sig)) / s_mid
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    p = presets.comfyui_preset("dpm_2", "normal", 7)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), x, atol=1e-8, rtol=0)

    sigmas = comfy_calculate_sigmas("simple", sig, 6)
    x = NOISE * (1 + sigmas[0] ** 2) ** 0.5
    for i in range(len(sigmas) - 1):  # k-diffusion sample_heun
        d = (x - comfy_denoised(x, sigmas[i], sig)) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - comfy_denoised(x_2, sigmas[i + 1], sig)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    p = presets.comfyui_preset("heun", "simple", 6)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), x, atol=1e-8, rtol=0)


def test_comfyui_uni_pc_samples():
    sig = train_sigmas()
    full = comfy_calculate_sigmas("karras", sig, 10)
    sigmas = np.concatenate([full[:-2], [0.001]])
    n = len(sigmas) - 1
    labels = [nearest(s, sig) for s in sigmas[:-1]]
    # official UniPC (ComfyUI's copy): order min(3, steps - 1), lower_order_final, bh1
    x = unipc_loop(sigmas, labels, sig, order=min(3, n - 1), variant="bh1")
    x = x / _a_s(0.001)[0]  # x /= ns.marginal_alpha(timesteps[-1])
    p = presets.comfyui_preset("uni_pc", "karras", 9)
    np.testing.assert_allclose(run_samplax(p, eps_jax(sig)), x, atol=1e-8, rtol=0)


# --------------------------------------------------------------------------------------
# (c) bad names and options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: presets.diffusers_preset("LMSDiscreteScheduler", 10), "LMSDiscreteScheduler"),
        (lambda: presets.diffusers_preset(DPM, 10, foo=1), "foo"),
        (lambda: presets.diffusers_preset(DPM, 10, algorithm_type="sde-dpmsolver++"),
         "algorithm_type"),
        (lambda: presets.diffusers_preset(DPM, 10, thresholding=True), "thresholding"),
        (lambda: presets.diffusers_preset(DPM, 10, solver_order=4), "solver_order"),
        (lambda: presets.diffusers_preset(DPM, 10, use_beta_sigmas=True), "use_beta_sigmas"),
        (lambda: presets.diffusers_preset(DPM, 10, beta_schedule="cubic"), "beta_schedule"),
        (lambda: presets.diffusers_preset(DPM, 10, timestep_spacing="uniform"),
         "timestep_spacing"),
        (lambda: presets.diffusers_preset(DPM, 10, variance_type="learned"), "variance_type"),
        (lambda: presets.diffusers_preset(DPM, 10, algorithm_type="dpmsolver"),
         "final_sigmas_type"),
        (lambda: presets.diffusers_preset(DPM, 20, use_karras_sigmas=True, solver_order=3,
                                          final_sigmas_type="sigma_min"), "NaN"),
        (lambda: presets.diffusers_preset(DPM, 10, _class_name="DDIMScheduler"), "_class_name"),
        (lambda: presets.diffusers_preset("UniPCMultistepScheduler", 10, solver_type="bh1"),
         "solver_type"),
        (lambda: presets.diffusers_preset("UniPCMultistepScheduler", 10, use_karras_sigmas=True,
                                          final_sigmas_type="sigma_min"), "final_sigmas_type"),
        (lambda: presets.diffusers_preset("DDIMScheduler", 10), "clip_sample"),
        (lambda: presets.diffusers_preset("EulerDiscreteScheduler", 10,
                                          interpolation_type="log_linear"), "interpolation_type"),
        (lambda: presets.diffusers_preset("FlowMatchEulerDiscreteScheduler", 10,
                                          stochastic_sampling=True), "stochastic_sampling"),
        (lambda: presets.diffusers_preset("FlowMatchEulerDiscreteScheduler", 10,
                                          use_dynamic_shifting=True), "mu"),
        (lambda: presets.diffusers_preset(DPM, 0), "steps"),
        (lambda: presets.comfyui_preset("lms", "karras", 10), "lms"),
        (lambda: presets.comfyui_preset("deis", "karras", 10), "deis"),
        (lambda: presets.comfyui_preset("dpmpp_2s_ancestral", "karras", 10),
         "dpmpp_2s_ancestral"),
        (lambda: presets.comfyui_preset("euler", "turbo", 10), "turbo"),
        (lambda: presets.comfyui_preset("euler", "karras", 10, schedule=RectifiedFlow()),
         "DiscreteVP"),
    ],
)
def test_bad_names_and_options_raise(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    msg = str(info.value).lower()
    assert "accepted" in msg or "needs" in msg, msg


def test_names_listed_and_documented():
    assert presets.preset_table() in presets.__doc__
    for name in presets.PRESETS["diffusers"]:
        assert f"`{name}`" in presets.preset_table()
    with pytest.raises(ValueError) as info:
        presets.diffusers_preset("nope", 10)
    for name in presets.PRESETS["diffusers"]:
        assert name in str(info.value)
    with pytest.raises(ValueError) as info:
        presets.comfyui_preset("nope", "karras", 10)
    for name in ("euler", "dpmpp_2m", "uni_pc_bh2", "dpm_2"):
        assert name in str(info.value)
    for sampler in ("euler_ancestral", "ddim"):
        p = presets.comfyui_preset(sampler, "karras", 13)
        assert p.plan.nfe == 13 and p.plan.stochastic == (sampler == "euler_ancestral")
    assert samplax.diffusers_preset is presets.diffusers_preset
    assert samplax.comfyui_preset is presets.comfyui_preset
