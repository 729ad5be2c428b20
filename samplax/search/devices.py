"""Many devices for a search: the network evaluations split over the noise axis.

A search's cost is its network evaluations on batches of noises: the teacher's
solves, the population's candidates, every fit and the held-out report all call
the denoiser on ``[n, *F]`` states. :func:`spread_denoiser` wraps the denoiser so
that each call pads its batch to a multiple of the mesh's devices (with copies of
its first row: valid inputs whose outputs are dropped), splits it over a 1-D mesh
(axis ``"noise"``, :class:`jax.sharding.NamedSharding`), and drops the padding from
the output. Every jitted program of the search then runs its network calls as one
SPMD program over the devices; the solver arithmetic around them and the losses'
reductions stay in the same compiled programs (XLA places them), and nothing moves
through the host. Any noise count works; none needs to divide the device count.

Across hosts (``jax.distributed.initialize`` first) the mesh holds every process's
devices (``jax.devices()``), and each process runs the same search on the same
noises (they are drawn from the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "noise"


def noise_mesh(devices: int | Sequence | Mesh | None = None) -> Mesh | None:
    """A 1-D mesh (axis ``"noise"``) for a search.

    ``devices``: a number ``N`` (the first ``N`` of ``jax.devices()``, which on
    several hosts lists every process's), a list of devices, or a mesh (returned
    as is; its devices are flattened to the noise axis if it has several axes).
    ``None``: every visible device. One device gives ``None``: nothing to split.
    """
    if isinstance(devices, Mesh):
        mesh = devices
        if mesh.axis_names != (AXIS,):
            mesh = Mesh(np.asarray(mesh.devices).reshape(-1), (AXIS,))
        return mesh if mesh.size > 1 else None
    visible = jax.devices()
    if devices is None:
        chosen = visible
    elif isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(visible):
            raise ValueError(
                f"devices={devices}, but {len(visible)} device(s) are visible "
                f"({visible[0].platform}); on CPU, set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={max(int(devices), 1)} before "
                "JAX starts to split it into that many")
        chosen = visible[:int(devices)]
    elif isinstance(devices, Sequence) and devices and all(
            isinstance(d, jax.Device) for d in devices):
        chosen = list(devices)
    else:
        raise TypeError(f"devices must be a count, a list of jax devices or a Mesh, got "
                        f"{devices!r}")
    return Mesh(np.asarray(chosen), (AXIS,)) if len(chosen) > 1 else None


_SPREAD: dict = {}


def spread_denoiser(denoiser: Callable, mesh: Mesh | None) -> Callable:
    """``denoiser`` with every call's batch (leading axis) split over ``mesh``.

    The batch is padded to a multiple of the mesh's size with copies of its first
    row, constrained to ``NamedSharding(mesh, P("noise"))``, and the padding dropped
    from the output, so results equal the one-device ones up to the reductions'
    order. Attributes the executor reads (``schedule``) are kept. ``mesh=None``
    returns ``denoiser`` itself.
    """
    if mesh is None or mesh.size == 1 or getattr(denoiser, "spread_over", None) is not None:
        return denoiser
    # the same wrapper for the same denoiser and mesh: the search's compiled programs
    # are cached by the denoiser's identity
    key = (id(denoiser), mesh)
    if key in _SPREAD:
        return _SPREAD[key][0]
    devices = mesh.size
    sharding = NamedSharding(mesh, P(AXIS))

    def spread(x, t):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return denoiser(x, t)
        n = x.shape[0]
        pad = -n % devices
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
        x = jax.lax.with_sharding_constraint(x, sharding)
        out = denoiser(x, t)
        return out[:n] if pad else out

    spread.schedule = getattr(denoiser, "schedule", None)
    spread.spread_over = mesh
    spread.__wrapped__ = denoiser
    if len(_SPREAD) >= 8:
        _SPREAD.pop(next(iter(_SPREAD)))
    _SPREAD[key] = (spread, denoiser)  # the denoiser stays alive, so its id stays unique
    return spread


__all__ = ["AXIS", "noise_mesh", "spread_denoiser"]
