"""The code passes the linter and the formatter configured in pyproject.toml (ruff,
``[tool.ruff]``):
the package, the tests, the benchmark and data scripts, and the notebooks' code cells (ruff reads
``.ipynb`` files itself). ruff comes with the dev extras, as pytest does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("lib", "tests", "benchmarks", "data_scripts", "notebooks")


def ruff(*args: str) -> subprocess.CompletedProcess:
    # --no-cache: a test run leaves nothing in the checkout
    cmd = [sys.executable, "-m", "ruff", *args, "--no-cache", *TARGETS]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    if "No module named ruff" in done.stderr:
        pytest.fail("ruff is not installed: `pip install -e '.[dev]'` installs it with pytest.")
    return done


def test_the_targets_exist():
    assert all((REPO / t).is_dir() for t in TARGETS)
    assert list((REPO / "notebooks").glob("*.ipynb")), "no notebook for ruff to read"


def test_ruff_check_passes():
    done = ruff("check", "--output-format", "concise")
    assert done.returncode == 0, f"`ruff check` found:\n{done.stdout}{done.stderr}"


def test_ruff_format_leaves_the_code_as_it_is():
    done = ruff("format", "--check")
    assert done.returncode == 0, (
        f"`ruff format` would change these files (run `ruff format {' '.join(TARGETS)}`):\n"
        f"{done.stdout}{done.stderr}"
    )
