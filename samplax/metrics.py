"""Error and distribution metrics used by tests, benchmarks, search and the CLI."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def per_sample_rmse(x, ref):
    """RMSE of each sample against its reference, over all non-batch axes."""
    axes = tuple(range(1, jnp.ndim(x)))
    return jnp.sqrt(jnp.mean((x - ref) ** 2, axis=axes))


def error_summary(x, ref, data=None) -> dict:
    """Median / mean per-sample RMSE and, for a mixture, the wrong-component share.

    The mean is dominated by the few samples that end in another mixture
    component, so the median is the headline number (REFERENCES.md, "Honest
    evaluation"); ``wrong_component`` reports those switches separately.
    """
    e = np.asarray(per_sample_rmse(x, ref))
    out = {"median_rmse": float(np.median(e)), "mean_rmse": float(np.mean(e))}
    if data is not None and hasattr(data, "component"):
        out["wrong_component"] = float(np.mean(np.asarray(data.component(x) != data.component(ref))))
    return out
