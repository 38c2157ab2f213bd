"""The documentation stays true: the generated references match the code, and every relative link resolves."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_references_are_current() -> None:
    """docs/methods.md and docs/cli.md are what scripts/gen_docs.py renders from today's registries and CLI."""
    gen = _gen_docs()
    for rel, render in gen.PAGES.items():
        committed = (ROOT / rel).read_text(encoding="utf-8") if (ROOT / rel).is_file() else ""
        assert committed == render(), f"{rel} is stale: run {gen.REGENERATE}"


def test_the_generated_methods_page_lists_every_registered_method() -> None:
    gen = _gen_docs()
    page = gen.render_methods()
    for module, attr, _, _ in gen.REGISTRIES:
        registry = getattr(importlib.import_module(module), attr)
        for name in registry.names():
            assert f": `{name}`" in page, f"{attr} {name} missing from docs/methods.md"
            assert registry.get(name).reference_url in page


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]
    return [p for p in pages if p.is_file()] + sorted((ROOT / "docs").rglob("*.md"))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens) and explicit ``<a id>``s."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)">', text))
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_relative_link_in_the_docs_resolves() -> None:
    """Files and heading anchors that README, BENCHMARKS, CHANGELOG and docs/ link to exist."""
    broken = []
    for page in _pages():
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = page.parent / path if path else page
                if not dest.exists():
                    broken.append(f"{page.relative_to(ROOT)}:{n}: {target}")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{page.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_machine_paths_in_the_docs() -> None:
    found = []
    for page in _pages():
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(?<![\w.])/(work|tmp|root|home)/", line):
                found.append(f"{page.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not found, "machine paths:\n" + "\n".join(found)
