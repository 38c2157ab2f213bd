"""The lock file: exact versions and hashes of everything the project is tested with.

``python3 scripts/lock.py check`` (run by every make target before it installs) says in one line when
``requirements.lock`` was not made from the current ``pyproject.toml`` and names ``make lock``.
``python3 scripts/lock.py compile PIP_COMPILE`` (``make lock``) resolves ``pyproject.toml`` with its ``dev``
and ``ray`` extras through pip-tools, torch pinned to the local CPU wheel, and appends the packages that
install without their declared dependencies (``[tool.adaptforge] no-deps``), each with its hashes.

Standard library only: it runs with the machine's ``python3`` before any virtual environment exists.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0+cpu"  # the local CPU wheel; never another build
EXTRAS = ("dev", "ray")
STAMP = "# pyproject-sha256: "


def _pyproject(root: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: nothing to compare with, the install itself still uses the lock
        return {}
    return tomllib.loads((root / "pyproject.toml").read_text())


def spec_hash(project: dict) -> str:
    """Hash of what the lock is made from: the dependencies, the locked extras, the no-deps list and the torch pin."""
    deps = project.get("project", {})
    spec = {
        "dependencies": sorted(deps.get("dependencies", [])),
        "extras": {e: sorted(deps.get("optional-dependencies", {}).get(e, [])) for e in EXTRAS},
        "no-deps": sorted(no_deps(project)),
        "torch": TORCH,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def no_deps(project: dict) -> list[str]:
    return list(project.get("tool", {}).get("adaptforge", {}).get("no-deps", []))


def check(root: Path) -> int:
    """0 when ``root``'s lock was made from its pyproject.toml, else 1 and one line saying what to run."""
    project = _pyproject(root)
    lock = root / "requirements.lock"
    if not lock.is_file():
        print(f"error: {lock.name} is missing; run `make lock` to create it", file=sys.stderr)
        return 1
    if not project:
        return 0
    stamp = next((line for line in lock.read_text().splitlines() if line.startswith(STAMP)), "")
    if stamp.removeprefix(STAMP).strip() != spec_hash(project):
        print(
            f"error: {lock.name} does not match pyproject.toml (a dependency changed without relocking); "
            "run `make lock` and commit the new lock",
            file=sys.stderr,
        )
        return 1
    return 0


def _hashes(requirement: str, pip: str) -> list[str]:
    """``--hash`` options for every file of an exact requirement, downloaded without its dependencies."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([pip, "download", "--quiet", "--no-deps", "-d", tmp, requirement], check=True)
        return [f"--hash=sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in sorted(Path(tmp).iterdir())]


def compile_lock(pip_compile: str) -> int:
    project = _pyproject(ROOT)
    if not project:
        print("error: `make lock` needs Python >= 3.11 (tomllib)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "torch.txt"
        pin.write_text(TORCH + "\n")
        out = Path(tmp) / "lock.txt"
        command = [pip_compile, "--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras"]
        command += ["--no-header", "--no-annotate", "--no-emit-index-url", "--no-emit-find-links"]
        command += [f"--extra={e}" for e in EXTRAS] + ["-c", str(pin), "-o", str(out), "pyproject.toml"]
        subprocess.run(command, check=True, cwd=ROOT)
        body = "\n".join(line for line in out.read_text().splitlines() if line.strip())
    pip = str(Path(pip_compile).with_name("pip"))
    extra = []
    for requirement in no_deps(project):
        if "==" not in requirement:
            print(f"error: [tool.adaptforge] no-deps entry {requirement!r} must pin a version (==)", file=sys.stderr)
            return 1
        extra.append(" \\\n    ".join([requirement, *_hashes(requirement, pip)]))
    header = [
        "# Exact versions and hashes of everything adaptforge is tested with; `make lock` writes this file from",
        "# pyproject.toml (its dependencies and the dev and ray extras), torch pinned to the local CPU wheel.",
        "# Every package below installs with --no-deps: this list is complete. The last ones are",
        "# [tool.adaptforge] no-deps: their declared dependencies are not needed and are never installed.",
        STAMP + spec_hash(project),
    ]
    lock = ROOT / "requirements.lock"
    lock.write_text("\n".join([*header, body.strip(), *extra]) + "\n")
    print(f"wrote {lock.name}: {sum(1 for line in lock.read_text().splitlines() if '==' in line)} packages")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"] and len(sys.argv) <= 3:
        sys.exit(check(Path(sys.argv[2]) if len(sys.argv) == 3 else ROOT))
    if len(sys.argv) == 3 and sys.argv[1] == "compile":
        sys.exit(compile_lock(sys.argv[2]))
    print("usage: lock.py check [ROOT] | compile PIP_COMPILE", file=sys.stderr)
    sys.exit(2)
