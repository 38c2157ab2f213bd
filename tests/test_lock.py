"""The lock file is made from the current pyproject.toml, and a stale one is named before anything installs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lock.py"

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="the check reads pyproject.toml with tomllib")


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "check", str(root)], capture_output=True, text=True)


def test_the_committed_lock_matches_pyproject() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_dependency_added_without_relocking_is_named_with_the_remedy(tmp_path) -> None:
    shutil.copy(ROOT / "requirements.lock", tmp_path)
    text = (ROOT / "pyproject.toml").read_text()
    added = text.replace("dependencies = [\n", 'dependencies = [\n    "left-pad>=1",\n', 1)
    (tmp_path / "pyproject.toml").write_text(added)
    done = check(tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: requirements.lock does not match pyproject.toml (a dependency changed without relocking); "
        "run `make lock` and commit the new lock"
    ]
    # what is not part of the dependency spec (tool settings) does not make the lock stale
    (tmp_path / "pyproject.toml").write_text(text.replace("line-length = 120", "line-length = 100"))
    assert check(tmp_path).returncode == 0


def test_a_missing_lock_is_named(tmp_path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    done = check(tmp_path)
    assert done.returncode == 1 and "requirements.lock is missing; run `make lock`" in done.stderr
