"""The repository explains itself: every Decision the package and the docs cite is written in
docs/design.md and the citation says so, no text points at a design document or reference
that is not in the repository, the licence pyproject names is there, and the docs stay true:
their links lead somewhere, the README is short, and the commands, settings, picture and
layout they name are the real ones."""

from __future__ import annotations

import ast
import html
import os
import re
import tomllib
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"Decisions? (\d+)((?:(?:, | and |-)\d+)*)")
# The pages by reader that README.md sends people to; they cite Decisions as the README does.
PAGES = ["docs/api.md", "docs/operate.md", "docs/guarantees.md", "docs/from-kala.md"]


def cited_texts() -> dict[str, str]:
    files = [ROOT / "README.md", *(ROOT / page for page in PAGES),
             *sorted((ROOT / "kala_celery").rglob("*.py")),
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
    texts = {**cited_texts(), **{md: (ROOT / md).read_text() for md in linked_docs()}}
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


# --- the docs stay true -------------------------------------------------------------------

def linked_docs() -> list[str]:
    """The Markdown files whose links must lead somewhere."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             ROOT / "bench" / "README.md", ROOT / "bench" / "RESULTS.md",
             ROOT / "bench" / "RESULTS-dashboard.md",
             *sorted((ROOT / "bench" / "history").glob("*.md"))]
    return [str(path.relative_to(ROOT)) for path in files]


FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (links and headings there are not real)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the text of its links and code, lower case, punctuation
    dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose(path.read_text()), re.MULTILINE):
        slug = anchor(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_anchor_is_githubs() -> None:
    assert anchor("Where we differ from Kala") == "where-we-differ-from-kala"
    assert anchor("Using it inside an existing Flask or Celery app") == (
        "using-it-inside-an-existing-flask-or-celery-app")
    assert anchor("3.3 GET/PUT /api/v1/job/{id}/params/") == "33-getput-apiv1jobidparams"
    assert anchor("`kala-celery import`, and [Kala](https://x)") == "kala-celery-import-and-kala"


def broken_links(name: str) -> list[str]:
    source = ROOT / name
    broken = []
    for target in LINK.findall(prose(source.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (source.parent / path).resolve() if path else source
        if not dest.exists():
            broken.append(f"{name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{name}: {target} (no such heading)")
    return broken


def test_every_relative_link_in_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    assert [b for name in linked_docs() for b in broken_links(name)] == []


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# There\n\n## A heading\n")
    page.write_text("[ok](there.md) [ok](there.md#a-heading) [ok](https://example.org/x)\n"
                    "[gone](missing.md) [gone](there.md#no-heading)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert broken_links("page.md") == [
            "page.md: missing.md (no such file)", "page.md: there.md#no-heading (no such heading)"]
    finally:
        ROOT = root


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def cli() -> click.Group:
    from kala_celery.ops.cli import main

    return main


def test_the_quick_start_is_two_commands_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "the quick start has a sh block"
    commands = [line.split(" #", 1)[0].strip() for line in block[1].splitlines()]
    assert [c for c in commands if c] == ["pip install . && kala-celery serve", "scripts/test.sh"]
    assert "serve" in cli().commands
    script = ROOT / "scripts" / "test.sh"
    assert script.is_file()
    assert os.access(script, os.X_OK) or script.read_text().startswith("#!/usr/bin/env bash")


def named_commands(text: str) -> set[tuple[str, ...]]:
    """`kala-celery <command> [<subcommand>]` as written in code (spans and blocks), with the
    alternatives of `kala-celery serve | api | beat`."""
    code = "\n".join(re.findall(r"^```.*?^```", text, re.MULTILINE | re.DOTALL)
                    + re.findall(r"`([^`\n]+)`", prose(text)))
    found = set()
    for match in re.finditer(r"kala-celery ((?:[a-z][a-z-]*)(?: \| [a-z][a-z-]*)*)( [a-z]+)?",
                             code):
        names = match[1].split(" | ")
        found |= {(name,) for name in names}
        if len(names) == 1 and match[2]:
            found.add((names[0], match[2].strip()))
    return found


def test_every_kala_celery_command_the_docs_name_exists() -> None:
    main = cli()
    missing = []
    for name in ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]:
        for named in named_commands((ROOT / name).read_text()):
            command = main.commands.get(named[0])
            if command is None:
                missing.append(f"{name}: kala-celery {named[0]}")
            elif (len(named) == 2 and isinstance(command, click.Group)
                  and named[1] not in command.commands):
                missing.append(f"{name}: kala-celery {' '.join(named)}")
    assert missing == []
    assert ("db", "upgrade") in named_commands((ROOT / "docs" / "operate.md").read_text())


def settings_read() -> set[str]:
    """The KALA_* variables Settings.from_env reads: its literal names, and the names its
    loops make (`for name in (...)`: f"KALA_{name.upper()}")."""
    source = (ROOT / "kala_celery" / "config.py").read_text()
    tree = ast.parse(source)
    from_env = next(node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef) and node.name == "from_env")
    names = set()
    for node in ast.walk(from_env):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"^KALA_[A-Z][A-Z_]*$", node.value))
        elif (isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple)
              and 'f"KALA_{name.upper()}"' in (ast.get_source_segment(source, node) or "")):
            names |= {f"KALA_{elt.value.upper()}" for elt in node.iter.elts}
    return names


def test_the_settings_operate_md_names_are_the_ones_config_reads() -> None:
    read = settings_read()
    assert {"KALA_DATABASE_URL", "KALA_REDELIVER_AFTER", "KALA_WORKER_TIMEOUT"} <= read
    named = set(re.findall(r"KALA_[A-Z][A-Z_]*[A-Z]", (ROOT / "docs" / "operate.md").read_text()))
    assert named - read == set(), "docs/operate.md names a setting config.py does not read"
    assert read - named == set(), "config.py reads a setting docs/operate.md does not explain"


def test_the_architecture_picture_is_drawn_from_its_source() -> None:
    dot = (ROOT / "docs" / "architecture.dot").read_text()
    svg = (ROOT / "docs" / "architecture.svg").read_text()
    labels = re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)
    assert len(labels) >= 8
    lines = [line.strip() for label in labels for line in label.split("\\n") if line.strip()]
    texts = {html.unescape(t).strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}
    assert [line for line in lines if line not in texts] == [], (
        "docs/architecture.svg is older than docs/architecture.dot: "
        "dot -Tsvg docs/architecture.dot -o docs/architecture.svg")
    assert "](docs/architecture.svg)" in (ROOT / "README.md").read_text()


def test_the_layout_in_docs_design_md_lists_every_module_and_the_import_order() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    layout = design.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"^```\n(kala_celery/.*?)^```", layout, re.MULTILINE | re.DOTALL)[1]
    words = set(re.findall(r"[\w.]+/?", tree))
    package = ROOT / "kala_celery"
    wanted = {p.name for p in package.glob("*.py")} | {
        p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists()}
    for sub in package.iterdir():
        if (sub / "__init__.py").exists() and sub.name != "web":
            wanted |= {p.name for p in sub.glob("*.py") if p.name != "__init__.py"}
    wanted.add("migrations/")
    assert sorted(wanted - words) == []
    layers_source = (ROOT / "tests" / "test_layout.py").read_text()
    layers = ast.literal_eval(re.search(r"^LAYERS = (\[.*?^\])", layers_source,
                                        re.MULTILINE | re.DOTALL)[1])
    rule = layout.split("**The import rule.**", 1)[1]
    order = [set(re.findall(r"`(\w+)`", line))
             for line in re.findall(r"^\d+\. (.*)$", rule, re.MULTILINE)]
    assert order == layers
