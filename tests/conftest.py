"""Numerics tests run in float64 with strict dtype promotion; float32 tests opt out
with the ``float32`` fixture."""

import os
import pathlib

# Compiled programs are kept on disk (set before jax is imported, and inherited by
# the CLI tests' subprocesses and the notebooks' kernels): those start fresh Python
# processes that compile the same search programs again, and many test files build
# the same samplers. From an empty cache, tests/test_cli.py took 92 s against 126 s.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

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


# The longest files (search fixtures, CLI subprocesses, notebooks) run first: with
# `--dist loadfile` each worker takes whole files in collection order, and a long file
# taken last leaves the other worker idle until it ends.
_LONG_FILES = ("test_cli.py", "test_cli_output.py", "test_coordinate_fit.py", "search.ipynb",
               "test_search_metric.py", "test_search.py", "test_search_trajectory.py",
               "test_search_cost.py", "test_teacher.py", "test_bad_input_suite.py",
               "test_devices.py", "quickstart.ipynb", "guidance.ipynb")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
