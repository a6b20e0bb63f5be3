"""The README's fresh-machine commands and the docs' links stay true."""

from __future__ import annotations

import re
import subprocess
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


def test_ci_runs_the_readme_lint_format_and_type_checks() -> None:
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S) if "mypy" in b)
    checks = [c.strip() for c in block.split("&&")]
    assert [c.split()[0] for c in checks] == [".venv/bin/ruff", ".venv/bin/ruff", ".venv/bin/mypy"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for check in checks:
        assert check in ci, f".ci/run does not run {check!r}"
    assert checks[-1].split()[1:] == ["pretrain", "transfer", "benchmarks", "tests"]


def test_every_protocol_file_is_indexed() -> None:
    index = (REPO / "docs" / "protocols.md").read_text()
    for md in sorted((REPO / "docs" / "protocols").glob("*.md")):
        assert f"protocols/{md.name}" in index, f"{md.name} is missing from docs/protocols.md"


#: what no file may cite: the maintainers' notes that ship with no copy of the project, and issue numbers of a
#: tracker that is not part of it (put the fact itself into docs/ instead)
UNSHIPPED_NOTES = re.compile(r"\b(?:" + "PAPER" + r"|" + "DESIGN" + r")\.md\b")
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues?\s*#?\s*\d+|(?<![\w&#/])#\d+\b")


def _tracked_text_files() -> list[Path]:
    """The files of the project: git's list in a checkout, else every file outside caches and environments."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        paths = [REPO / name for name in out.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        paths = [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    return [p for p in paths if p.is_file()]


def citations_of_missing_sources(paths: list[Path], root: Path = REPO) -> list[str]:
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (images, checkpoints) cite nothing
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in (UNSHIPPED_NOTES, ISSUE_NUMBER):
                match = pattern.search(line)
                if match:
                    found.append(f"{path.relative_to(root)}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    return found


def test_no_file_cites_notes_or_issue_numbers_the_project_does_not_ship() -> None:
    paths = _tracked_text_files()
    assert len(paths) > 100 and REPO / "README.md" in paths
    found = citations_of_missing_sources(paths)
    assert not found, "cite what docs/ holds (docs/protocols/sources.md, docs/architecture.md) instead:\n" + "\n".join(
        found
    )


def test_the_citation_check_finds_each_kind(tmp_path: Path) -> None:
    probe = tmp_path / "notes.md"
    # the probe strings are built from pieces, so that this file does not cite them itself
    lines = ["see " + "PAPER" + ".md §2", "DESIGN" + ".md says", "fixed in iss" + "ue 13", "(#" + "15)"]
    lines.append("colour #fff, C# 4")  # not citations
    probe.write_text("\n".join(lines) + "\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe iss" + b"ue 7")
    found = citations_of_missing_sources([probe, tmp_path / "image.png"], root=tmp_path)
    assert [f.split(": ", 1)[0] for f in found] == [f"notes.md:{n}" for n in (1, 2, 3, 4)]
