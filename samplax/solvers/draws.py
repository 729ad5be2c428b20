"""Standard normal draws per batch row, as one fusible elementwise computation.

The stochastic samplers draw a state-sized standard normal in every NFE slot. With
``jax.random.normal`` on CPU each draw is a threefry hash lowered as a rolled
5-iteration loop (JAX rolls it on CPU to keep programs small): a loop of small
kernels per slot, which costs about as much as a small network call at batch 1
and doubles the compile time of a sampler. This module computes the *same
numbers* with the hash unrolled in ``jax.numpy`` (Threefry-2x32, 20 rounds; Salmon
et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", as ``jax.random``
uses it), so XLA compiles a draw into the same fused loop as the arithmetic
around it. Equality with ``jax.random`` (threefry keys, JAX's default
partitionable bit layout) is tested bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 block cipher (20 rounds) of the counters ``(x1, x2)`` under the
    key ``(k1, k2)``, elementwise on broadcast ``uint32`` arrays; ``jax.random``'s hash."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def is_threefry(key) -> bool:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return "threefry" in str(jax.random.key_impl(key))
    return key.dtype == jnp.uint32 and key.shape == (2,)


def key_words(key):
    """The two ``uint32`` words of a threefry key (typed or raw)."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.asarray(words, jnp.uint32)
    return words[0], words[1]


def fold_in_words(words, data):
    """``jax.random.fold_in`` on key words ``(k1, k2)`` and ``uint32`` data, elementwise
    over their broadcast shape."""
    return threefry2x32(words[0], words[1], jnp.zeros_like(data), data)


def slot_row_words(key, n_slots: int, n_rows: int):
    """The words ``(k1, k2)``, each ``[n_slots, n_rows]``, of
    ``fold_in(fold_in(key, k), i)`` for slot ``k`` and batch row ``i``. Both folds run
    through one hash in a two-step loop: a program holds the hash once more, not twice."""
    k1, k2 = key_words(key)
    shape = (n_slots, n_rows)
    slots = jnp.broadcast_to(jnp.arange(n_slots, dtype=jnp.uint32)[:, None], shape)
    rows = jnp.broadcast_to(jnp.arange(n_rows, dtype=jnp.uint32)[None, :], shape)
    data = jnp.stack([slots, rows])

    def fold(j, words):
        return fold_in_words(words, data[j])

    return jax.lax.fori_loop(0, 2, fold, (jnp.broadcast_to(k1, shape), jnp.broadcast_to(k2, shape)))


def normal_rows(k1, k2, row_shape: tuple[int, ...], dtype) -> Array:
    """``jax.random.normal(key_i, row_shape, dtype)`` for every row key ``(k1[i], k2[i])``
    (``[B]`` words), stacked to ``[B, *row_shape]``: bits by the hash of the flat
    index, a uniform on ``(-1, 1)`` from the mantissa, then ``sqrt(2) erfinv``."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"normal_rows draws float32 or float64, got {dtype}")
    n = int(np.prod(row_shape, dtype=np.int64))
    if n >= 2**32:
        raise ValueError(f"a row of {n} numbers is more than one 32-bit counter covers")
    idx = jnp.arange(n, dtype=jnp.uint32)[None, :]
    b1, b2 = threefry2x32(k1[:, None], k2[:, None], jnp.zeros_like(idx), idx)
    if dtype == jnp.float32:
        bits, uint, nbits, one = b1 ^ b2, jnp.uint32, 32, np.float32(1.0).view(np.uint32)
    else:
        uint, nbits, one = jnp.uint64, 64, np.float64(1.0).view(np.uint64)
        bits = (b1.astype(uint) << uint(32)) | b2.astype(uint)
    nmant = jnp.finfo(dtype).nmant
    mant = (bits >> uint(nbits - nmant)) | uint(one)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = jax.lax.bitcast_convert_type(mant, dtype) - np.array(1.0, dtype)
    u = jnp.maximum(lo, u * (np.array(1.0, dtype) - lo) + lo)
    z = np.array(np.sqrt(2), dtype) * jax.lax.erf_inv(u)
    return z.reshape((k1.shape[0],) + tuple(row_shape))


def sample_noise(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Standard normal noise whose row ``i`` depends only on ``(key, i)``:
    ``jax.random.normal(fold_in(key, i), shape[1:], dtype)`` stacked over rows.

    The leading axis is the batch: a sample's noise does not change when the
    batch grows or shrinks, so results are reproducible per sample.
    """
    if len(shape) == 0:
        return jax.random.normal(key, shape, dtype)
    if not is_threefry(key) or jnp.dtype(dtype) not in (jnp.float32, jnp.float64):
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape[1:],
                                                    dtype))(jnp.arange(shape[0]))
    k1, k2 = fold_in_words(key_words(key), jnp.arange(shape[0], dtype=jnp.uint32))
    return normal_rows(k1, k2, tuple(shape[1:]), dtype)


__all__ = ["fold_in_words", "is_threefry", "key_words", "normal_rows", "sample_noise",
           "slot_row_words", "threefry2x32"]
