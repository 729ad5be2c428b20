"""The executor of another git revision, to compare the current one against it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path


def load_executor(ref: str):
    """The ``sample`` function of ``samplax/solvers/executor.py`` at git revision ``ref``
    (run with the current plans and the rest of the current package)."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{ref}:samplax/solvers/executor.py"], cwd=root,
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "executor_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("executor_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["executor_baseline"] = module
    spec.loader.exec_module(module)
    return module.sample
