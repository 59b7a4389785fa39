"""The repository explains itself: every Decision the package and the README cite is written in
docs/design.md and the citation says so, no text points at a design document or reference
that is not in the repository, and the licence pyproject names is there."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"Decisions? (\d+)((?:(?:, | and |-)\d+)*)")


def cited_texts() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "kala_celery").rglob("*.py")),
             *sorted((ROOT / "kala_celery").rglob("*.html"))]
    return {str(path.relative_to(ROOT)): path.read_text() for path in files}


def written_decisions() -> set[int]:
    design = (ROOT / "docs" / "design.md").read_text()
    section = design.split("## Decisions", 1)[1]
    return {int(n) for n in re.findall(r"^\*\*(\d+)\. ", section, re.MULTILINE)}


def sections(name: str, text: str) -> list[str]:
    """Where a citation must find its pointer: the README's `## ` section, a whole module."""
    return re.split(r"^## ", text, flags=re.MULTILINE) if name.endswith(".md") else [text]


def test_every_cited_decision_is_written_in_docs_design_md_and_the_citation_says_where() -> None:
    written = written_decisions()
    assert set(range(1, 24)) <= written
    unpointed, unknown = [], []
    for name, text in cited_texts().items():
        for section in sections(name, text):
            for match in CITATION.finditer(section):
                numbers = [int(match[1]), *map(int, re.findall(r"\d+", match[2]))]
                unknown += [f"{name}: Decision {n}" for n in numbers if n not in written]
                if "docs/design.md" not in section:
                    unpointed.append(f"{name}: {match[0]} in {section[:60]!r}")
    assert unknown == []
    assert unpointed == []  # a module (or README section) citing Decisions names docs/design.md


def test_nothing_points_outside_the_repository() -> None:
    texts = {**cited_texts(), **{f"docs/{p.name}": p.read_text()
                                 for p in (ROOT / "docs").glob("*.md")}}
    for name, text in texts.items():
        assert "DESIGN.md" not in text, name  # the design is docs/design.md
        assert "KALA-SPEC" not in text, name
        assert "../shared" not in text and "/work/shared" not in text, name


def test_the_licence_pyproject_names_is_in_the_repository() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} kala-celery contributors$", licence, re.MULTILINE)
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in licence
