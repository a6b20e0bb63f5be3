"""The README's fresh-machine commands and the docs' links stay true."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "results").glob("*.md"))]


def test_relative_links_in_markdown_resolve() -> None:
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if target.startswith(("http", "mailto")):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(REPO)} -> {target}")
    assert not broken, f"broken links: {broken}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b and "venv" in b)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()
    assert any("bench demo" in b and "venv" in b for b in blocks), "README must give the one-command demo"


def test_every_protocol_file_is_indexed() -> None:
    index = (REPO / "docs" / "protocols.md").read_text()
    for md in sorted((REPO / "docs" / "protocols").glob("*.md")):
        assert f"protocols/{md.name}" in index, f"{md.name} is missing from docs/protocols.md"
