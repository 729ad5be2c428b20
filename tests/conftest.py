"""Numerics tests run in float64 with strict dtype promotion; float32 tests opt out
with the ``float32`` fixture."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "standard")


@pytest.fixture
def float32():
    """Run a test with float32 defaults (for stability checks)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)
